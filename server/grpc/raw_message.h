// Protobuf messages to and from gRPC byte buffers, for methods registered raw. gRPC 1.51's
// generated callback handlers answer a request they cannot parse with a bare UNIMPLEMENTED (and
// a stream message with a broken stream); raw methods parse here and answer INVALID_ARGUMENT
// naming the message type.
//
//   lora::v1::GetJobRequest request;
//   LORA_RETURN_IF_ERROR(ParseMessage(*raw, &request));
//   *raw_response = ToByteBuffer(job);
#ifndef LORA_SERVER_GRPC_RAW_MESSAGE_H_
#define LORA_SERVER_GRPC_RAW_MESSAGE_H_

#include <google/protobuf/message.h>
#include <grpcpp/support/byte_buffer.h>

#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace lora::server {

inline absl::Status ParseMessage(const grpc::ByteBuffer& in, google::protobuf::Message* message) {
  std::vector<grpc::Slice> slices;
  std::string bytes;
  if (in.Dump(&slices).ok()) {
    for (const grpc::Slice& slice : slices)
      bytes.append(reinterpret_cast<const char*>(slice.begin()), slice.size());
  }
  if (!message->ParseFromString(bytes)) {
    return absl::InvalidArgumentError(
        absl::StrCat("request: not a valid ", message->GetDescriptor()->full_name(), " message"));
  }
  return absl::OkStatus();
}

inline grpc::ByteBuffer ToByteBuffer(const google::protobuf::Message& message) {
  const std::string wire = message.SerializeAsString();
  grpc::Slice slice(wire);
  return grpc::ByteBuffer(&slice, 1);
}

}  // namespace lora::server

#endif  // LORA_SERVER_GRPC_RAW_MESSAGE_H_
