// gRPC's own log lines (its core logs errors on stderr, in its own format) through
// common/log.h, so that with --log-format json every line on stderr is JSON:
//   {"ts":...,"level":"error","component":"lorad","msg":"...","source":"grpc","file":"chttp2_transport.cc:1234"}
//
//   lora::InitLogging(options);
//   if (options.format == lora::LogFormat::kJson) lora::RouteGrpcLogs();  // before gRPC starts
#ifndef LORA_COMMON_GRPC_LOG_H_
#define LORA_COMMON_GRPC_LOG_H_

namespace lora {

// Process-wide (gpr_set_log_function); gRPC's verbosity (GRPC_VERBOSITY) still decides what
// is logged.
void RouteGrpcLogs();

}  // namespace lora

#endif  // LORA_COMMON_GRPC_LOG_H_
