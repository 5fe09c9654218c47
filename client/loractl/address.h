// The lorad address loractl is given (--addr, LORACTL_ADDR), checked before any connection:
// gRPC would read "host" as "host:443" and fail later with a confusing message.
//
//   HOST:PORT      a host name or IPv4 address and a port 1..65535 (lorad listens on 50051)
//   [IPV6]:PORT    e.g. [::1]:50051
//   unix:PATH      a Unix domain socket (also unix-abstract:NAME)
//   dns:[//DNS-SERVER/]HOST:PORT
//   A,B,...        lorad replicas: several of the above, comma-separated
#ifndef LORA_CLIENT_LORACTL_ADDRESS_H_
#define LORA_CLIENT_LORACTL_ADDRESS_H_

#include <string>

#include "absl/status/status.h"

namespace lora::loractl {

// OK, or INVALID_ARGUMENT "<source> '<address>': <why>; expected HOST:PORT ...". `source`
// names where the address came from ("--addr", "LORACTL_ADDR").
absl::Status ValidateAddress(const std::string& address, const std::string& source);

}  // namespace lora::loractl

#endif  // LORA_CLIENT_LORACTL_ADDRESS_H_
