#include "client/loractl/address.h"

#include <cctype>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "common/address_list.h"

namespace lora::loractl {
namespace {

constexpr char kExpected[] =
    "expected HOST:PORT (e.g. 127.0.0.1:50051; lorad's default port is 50051), [IPV6]:PORT or "
    "unix:PATH";

bool HostNameChar(char c) {
  return std::isalnum(static_cast<unsigned char>(c)) != 0 || c == '-' || c == '.' || c == '_';
}

bool Ipv6Char(char c) {
  // Hex digits, colons, dots (an embedded IPv4), and a zone after '%' ("fe80::1%eth0").
  return std::isalnum(static_cast<unsigned char>(c)) != 0 || c == ':' || c == '.' || c == '%' ||
         c == '-' || c == '_';
}

// Why HOST:PORT (or [IPV6]:PORT) is not one, "" when it is.
std::string HostPortProblem(const std::string& a) {
  if (a.empty()) return "empty";
  std::string host, port;
  if (a.front() == '[') {
    const size_t close = a.find(']');
    if (close == std::string::npos) return "'[' without ']'";
    host = a.substr(1, close - 1);
    if (host.empty()) return "no host between [ and ]";
    for (char c : host) {
      if (!Ipv6Char(c)) return absl::StrCat("'", std::string(1, c), "' in an IPv6 address");
    }
    const std::string rest = a.substr(close + 1);
    if (rest.empty()) return "no port";
    if (rest.front() != ':') return absl::StrCat("'", rest, "' after ']'");
    port = rest.substr(1);
  } else {
    const size_t colon = a.find(':');
    if (colon == std::string::npos) return "no port";
    if (a.find(':', colon + 1) != std::string::npos) {
      return "more than one ':' (an IPv6 address goes in brackets: [::1]:50051)";
    }
    host = a.substr(0, colon);
    port = a.substr(colon + 1);
    if (host.empty()) return "no host";
    for (char c : host) {
      if (!HostNameChar(c)) return absl::StrCat("'", std::string(1, c), "' in the host name");
    }
  }
  if (port.empty()) return "no port";
  int value = 0;
  for (char c : port) {
    if (!std::isdigit(static_cast<unsigned char>(c))) {
      return absl::StrCat("port '", port, "' is not a number");
    }
  }
  if (port.size() > 5 || !absl::SimpleAtoi(port, &value) || value < 1 || value > 65535) {
    return absl::StrCat("port ", port, " is out of range (1-65535)");
  }
  return "";
}

}  // namespace

absl::Status ValidateAddress(const std::string& address, const std::string& source) {
  // lorad replicas: every address of the list must be one.
  if (absl::StrContains(address, ',')) {
    for (const std::string& one : SplitAddressList(address)) {
      if (one.empty()) {
        return absl::InvalidArgumentError(
            absl::StrCat(source, " '", address, "': an empty address in the list; ", kExpected));
      }
      if (absl::Status s = ValidateAddress(one, "the address"); !s.ok()) {
        return absl::InvalidArgumentError(absl::StrCat(source, " '", address, "': ", s.message()));
      }
    }
    return absl::OkStatus();
  }
  std::string problem;
  if (absl::StartsWith(address, "unix:") || absl::StartsWith(address, "unix-abstract:")) {
    if (address.substr(address.find(':') + 1).empty()) problem = "no socket path";
  } else if (absl::StartsWith(address, "dns:")) {
    // dns:HOST:PORT, dns:///HOST:PORT or dns://DNS-SERVER/HOST:PORT: the part after the last '/'.
    std::string target = address.substr(4);
    if (absl::StartsWith(target, "//")) {
      const size_t slash = target.find('/', 2);
      target = slash == std::string::npos ? std::string() : target.substr(slash + 1);
    }
    problem = HostPortProblem(target);
  } else {
    problem = HostPortProblem(address);
  }
  if (problem.empty()) return absl::OkStatus();
  return absl::InvalidArgumentError(
      absl::StrCat(source, " '", address, "': ", problem, "; ", kExpected));
}

}  // namespace lora::loractl
