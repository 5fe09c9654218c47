#include "server/metrics/metrics_http.h"

#include <civetweb.h>
#include <netdb.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstring>
#include <mutex>
#include <thread>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

namespace lora {
namespace {

constexpr char kMetricsContentType[] = "text/plain; version=0.0.4; charset=utf-8";

// Validates "HOST:PORT" here so that a typo gets a clear message instead of civetweb's, and so
// that civetweb's list and TLS syntax ("80,443s") cannot sneak in.
absl::Status CheckListenAddress(const std::string& listen) {
  size_t colon = listen.rfind(':');
  std::string host = colon == std::string::npos ? "" : listen.substr(0, colon);
  std::string port = colon == std::string::npos ? listen : listen.substr(colon + 1);
  int port_number = 0;
  bool port_ok = !port.empty() && port.size() <= 5 &&
                 std::all_of(port.begin(), port.end(), absl::ascii_isdigit) &&
                 absl::SimpleAtoi(port, &port_number) && port_number <= 65535;
  bool host_ok = host.empty() || (host.front() == '[' && host.back() == ']') ||
                 std::all_of(host.begin(), host.end(),
                             [](char c) { return absl::ascii_isdigit(c) || c == '.'; });
  if (!port_ok || !host_ok) {
    return absl::InvalidArgumentError(absl::StrCat(
        "metrics listen address \"", listen,
        "\": expected HOST:PORT with a numeric host (127.0.0.1:9090, 0.0.0.0:0, :9090)"));
  }
  constexpr unsigned kIpv6Feature = 8;  // from civetweb.h's mg_check_feature list
  if (!host.empty() && host.front() == '[' && !mg_check_feature(kIpv6Feature)) {
    return absl::InvalidArgumentError(absl::StrCat("metrics listen address \"", listen,
                                                   "\": this civetweb build has no IPv6 support"));
  }
  return absl::OkStatus();
}

// civetweb spells "every interface" as a bare port.
std::string CivetwebPorts(const std::string& listen) {
  return !listen.empty() && listen.front() == ':' ? listen.substr(1) : listen;
}

bool IsGetOrHead(mg_connection* conn, bool* head) {
  const mg_request_info* info = mg_get_request_info(conn);
  *head = std::strcmp(info->request_method, "HEAD") == 0;
  return *head || std::strcmp(info->request_method, "GET") == 0;
}

int SendBody(mg_connection* conn, const char* content_type, const std::string& body) {
  bool head = false;
  if (!IsGetOrHead(conn, &head)) {
    mg_send_http_error(conn, 405, "Only GET and HEAD are allowed\n");
    return 405;
  }
  mg_send_http_ok(conn, content_type, static_cast<long long>(body.size()));
  if (!head) mg_write(conn, body.data(), body.size());
  return 200;
}

int HandleMetrics(mg_connection* conn, void* cbdata) {
  const auto* registry = static_cast<const MetricsRegistry*>(cbdata);
  return SendBody(conn, kMetricsContentType, registry->Render());
}

int HandleHealthz(mg_connection* conn, void* /*cbdata*/) {
  return SendBody(conn, "text/plain; charset=utf-8", "ok");
}

int HandleLeader(mg_connection* conn, void* cbdata) {
  const auto* leading = static_cast<const std::function<bool()>*>(cbdata);
  if (!*leading || (*leading)()) return SendBody(conn, "text/plain; charset=utf-8", "leader");
  bool head = false;
  if (!IsGetOrHead(conn, &head)) {
    mg_send_http_error(conn, 405, "Only GET and HEAD are allowed\n");
    return 405;
  }
  mg_send_http_error(conn, 503, "follower");
  return 503;
}

// Without this civetweb would write its internal errors to stderr; the ones that matter
// (bind failures) come back from mg_start2 instead.
int DropLogMessage(const mg_connection* /*conn*/, const char* /*message*/) { return 1; }

// Where a local client reaches the listener: the wildcard addresses are not connectable.
std::string ConnectHost(const std::string& listen) {
  size_t colon = listen.rfind(':');
  std::string host = colon == std::string::npos ? "" : listen.substr(0, colon);
  if (!host.empty() && host.front() == '[') host = host.substr(1, host.size() - 2);
  if (host.empty() || host == "0.0.0.0") return "127.0.0.1";
  if (host == "::") return "::1";
  return host;
}

// Opens and closes one connection to the listener; failures are expected once it is gone.
void PokeListener(const std::string& host, int port) {
  addrinfo hints;
  std::memset(&hints, 0, sizeof(hints));
  hints.ai_flags = AI_NUMERICHOST | AI_NUMERICSERV;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* info = nullptr;
  if (getaddrinfo(host.c_str(), std::to_string(port).c_str(), &hints, &info) != 0) return;
  int fd = socket(info->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd >= 0) {
    connect(fd, info->ai_addr, info->ai_addrlen);
    close(fd);
  }
  freeaddrinfo(info);
}

}  // namespace

absl::StatusOr<std::unique_ptr<MetricsHttpServer>> MetricsHttpServer::Create(
    const MetricsRegistry* registry, const std::string& listen, std::function<bool()> leading) {
  if (registry == nullptr) return absl::InvalidArgumentError("metrics server: no registry");
  absl::Status address = CheckListenAddress(listen);
  if (!address.ok()) return address;

  static std::once_flag init_once;
  std::call_once(init_once, [] { mg_init_library(0); });

  std::unique_ptr<MetricsHttpServer> server(new MetricsHttpServer());
  server->leading_ = std::move(leading);
  // Scrapes and probes are short, but clients that connect and send nothing each hold a
  // civetweb thread until the request timeout: enough threads that dozens of them leave one
  // free for /healthz (the liveness probe), and a timeout short enough that more are shed
  // quickly.
  std::string ports_option = CivetwebPorts(listen);
  const char* options[] = {"listening_ports",
                           ports_option.c_str(),
                           "num_threads",
                           "64",
                           "request_timeout_ms",
                           "2000",
                           nullptr};
  mg_callbacks callbacks;
  std::memset(&callbacks, 0, sizeof(callbacks));
  callbacks.log_message = DropLogMessage;
  mg_init_data init;
  std::memset(&init, 0, sizeof(init));
  init.callbacks = &callbacks;
  init.configuration_options = options;
  char error_text[256] = "";
  unsigned error_code = 0;
  mg_error_data error;
  std::memset(&error, 0, sizeof(error));
  error.code = &error_code;
  error.text = error_text;
  error.text_buffer_size = sizeof(error_text);

  // civetweb's mg_start may set SIGCHLD to SIG_IGN (for its CGI support), which would make
  // the kernel reap our children before we can wait for them; put the disposition back.
  struct sigaction saved_sigchld;
  sigaction(SIGCHLD, nullptr, &saved_sigchld);
  server->context_ = mg_start2(&init, &error);
  sigaction(SIGCHLD, &saved_sigchld, nullptr);
  if (server->context_ == nullptr) {
    return absl::UnavailableError(absl::StrCat("metrics server on ", listen, ": ",
                                               error_text[0] ? error_text : "failed to start"));
  }

  mg_server_port ports[4];
  std::memset(ports, 0, sizeof(ports));
  int n = mg_get_server_ports(server->context_, 4, ports);
  if (n < 1 || ports[0].port <= 0) {
    return absl::InternalError(absl::StrCat("metrics server on ", listen, ": no bound port"));
  }
  server->port_ = ports[0].port;
  server->connect_host_ = ConnectHost(listen);

  // "$" makes the match exact; civetweb would otherwise route /metricsfoo here too.
  mg_set_request_handler(server->context_, "/metrics$", HandleMetrics,
                         const_cast<MetricsRegistry*>(registry));
  mg_set_request_handler(server->context_, "/healthz$", HandleHealthz, nullptr);
  mg_set_request_handler(server->context_, "/leader$", HandleLeader, &server->leading_);
  return server;
}

MetricsHttpServer::~MetricsHttpServer() {
  if (context_ == nullptr) return;
  // civetweb's accept loop polls with a 2 s timeout and only then notices mg_stop. Connecting
  // wakes it, so stopping takes milliseconds; the loop repeats because a poke that lands
  // before mg_stop raises its flag is just served as an (empty) request.
  std::atomic<bool> stopped{false};
  std::thread waker([this, &stopped] {
    while (!stopped.load()) {
      PokeListener(connect_host_, port_);
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
  });
  mg_stop(context_);
  stopped = true;
  waker.join();
}

}  // namespace lora
