#include "client/loractl/output.h"

#include <chrono>
#include <cmath>
#include <iostream>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "google/protobuf/util/json_util.h"

namespace lora::loractl {
namespace {

void Yaml(const nlohmann::json& v, int indent, std::string* out);

std::string YamlScalar(const nlohmann::json& v) {
  if (v.is_string()) {
    const std::string s = v.get<std::string>();
    // Quote anything YAML could read as another type or syntax.
    bool plain = !s.empty() && s.find_first_of(":#{}[],&*?|<>=!%@`\"'\n\\") == std::string::npos &&
                 s.front() != ' ' && s.back() != ' ' && s != "true" && s != "false" &&
                 s != "null" && s != "~" && !std::isdigit(static_cast<unsigned char>(s.front())) &&
                 s.front() != '-' && s.front() != '.';
    return plain ? s : v.dump();
  }
  return v.dump();
}

void Yaml(const nlohmann::json& v, int indent, std::string* out) {
  const std::string pad(static_cast<size_t>(indent), ' ');
  if (v.is_object()) {
    if (v.empty()) {
      absl::StrAppend(out, " {}\n");
      return;
    }
    absl::StrAppend(out, "\n");
    for (const auto& [k, x] : v.items()) {
      absl::StrAppend(out, pad, YamlScalar(k), ":");
      if (x.is_object() || x.is_array()) {
        Yaml(x, indent + 2, out);
      } else {
        absl::StrAppend(out, " ", YamlScalar(x), "\n");
      }
    }
  } else if (v.is_array()) {
    if (v.empty()) {
      absl::StrAppend(out, " []\n");
      return;
    }
    absl::StrAppend(out, "\n");
    for (const auto& x : v) {
      absl::StrAppend(out, pad, "-");
      if (x.is_object() || x.is_array()) {
        Yaml(x, indent + 2, out);
      } else {
        absl::StrAppend(out, " ", YamlScalar(x), "\n");
      }
    }
  } else {
    absl::StrAppend(out, " ", YamlScalar(v), "\n");
  }
}

}  // namespace

namespace {

struct LiveLine {
  std::FILE* out = nullptr;  // null: none drawn
  std::function<void()> redraw;
};
LiveLine& TheLiveLine() {
  static LiveLine line;
  return line;
}

}  // namespace

void LiveLineDrawn(std::FILE* out, std::function<void()> redraw) {
  TheLiveLine() = {out, std::move(redraw)};
}

void LiveLineGone() { TheLiveLine() = {}; }

void EndLiveLine() {
  LiveLine& line = TheLiveLine();
  if (line.out == nullptr) return;
  std::fputs("\n", line.out);
  std::fflush(line.out);
  line = {};
}

void Notice(const std::string& text) {
  LiveLine& line = TheLiveLine();
  if (line.out != nullptr) {
    std::fputs("\r\x1b[2K", line.out);  // erase it; the message takes its place
    std::fflush(line.out);
  }
  std::cout.flush();
  std::cerr << "loractl: " << text << std::endl;
  if (line.out != nullptr && line.redraw) {
    std::function<void()> redraw = line.redraw;  // it registers the line anew
    redraw();
  }
}

int ReportError(const absl::Status& status) {
  EndLiveLine();
  std::cout.flush();
  std::cerr << "loractl: error: " << status.message() << std::endl;
  switch (status.code()) {
    case absl::StatusCode::kNotFound:
      return kNotFound;
    case absl::StatusCode::kInvalidArgument:
      return kUsage;
    case absl::StatusCode::kUnavailable:
    case absl::StatusCode::kDeadlineExceeded:
      return kUnreachable;
    case absl::StatusCode::kUnauthenticated:
    case absl::StatusCode::kPermissionDenied:
      return kUnauthenticated;
    default:
      return kError;
  }
}

nlohmann::json ToJson(const google::protobuf::Message& message) {
  std::string text;
  google::protobuf::util::JsonPrintOptions o;
  o.preserve_proto_field_names = true;
  (void)google::protobuf::util::MessageToJsonString(message, &text, o);
  return nlohmann::json::parse(text, nullptr, false);
}

std::string ToYaml(const nlohmann::json& value) {
  std::string out;
  if (value.is_array()) {
    for (const auto& x : value) {
      out += "---";
      Yaml(x, 0, &out);
    }
    return out;
  }
  Yaml(value, 0, &out);
  return out.substr(1);  // drop the leading newline of a top-level mapping
}

void PrintMessages(const std::vector<const google::protobuf::Message*>& messages, Format format,
                   bool as_list) {
  nlohmann::json all = nlohmann::json::array();
  for (const auto* m : messages) all.push_back(ToJson(*m));
  const nlohmann::json& doc = as_list ? all : all.at(0);
  if (format == Format::kYaml) {
    std::cout << ToYaml(doc);
  } else {
    std::cout << doc.dump(2) << std::endl;
  }
}

void PrintTable(const std::vector<std::string>& header,
                const std::vector<std::vector<std::string>>& rows) {
  std::vector<size_t> width(header.size());
  for (size_t i = 0; i < header.size(); ++i) width[i] = header[i].size();
  for (const auto& r : rows) {
    for (size_t i = 0; i < r.size() && i < width.size(); ++i)
      width[i] = std::max(width[i], r[i].size());
  }
  auto line = [&](const std::vector<std::string>& cells) {
    std::string out;
    for (size_t i = 0; i < cells.size(); ++i) {
      out += cells[i];
      if (i + 1 < cells.size()) out += std::string(width[i] - cells[i].size() + 2, ' ');
    }
    std::cout << out << "\n";
  };
  line(header);
  for (const auto& r : rows) line(r);
  std::cout.flush();
}

std::string StateName(lora::v1::JobState state) { return lora::v1::JobState_Name(state); }

std::string Age(const google::protobuf::Timestamp& t) {
  const int64_t now = std::chrono::duration_cast<std::chrono::seconds>(
                          std::chrono::system_clock::now().time_since_epoch())
                          .count();
  const int64_t s = now - t.seconds();
  if (s < 60) return absl::StrCat(std::max<int64_t>(s, 0), "s");
  if (s < 3600) return absl::StrCat(s / 60, "m");
  if (s < 86400) return absl::StrCat(s / 3600, "h");
  return absl::StrCat(s / 86400, "d");
}

std::string Duration(double seconds) {
  if (!std::isfinite(seconds) || seconds < 0) return "-";
  const int64_t s = static_cast<int64_t>(seconds + 0.5);
  if (s >= 3600) return absl::StrFormat("%d:%02d:%02d", s / 3600, (s / 60) % 60, s % 60);
  return absl::StrFormat("%d:%02d", s / 60, s % 60);
}

std::string Progress(const lora::v1::Job& job) {
  if (job.state() == lora::v1::SUCCEEDED) return "100%";
  if (job.progress().total_steps() <= 0) return "-";
  return absl::StrCat(100 * job.progress().step() / job.progress().total_steps(), "%");
}

std::string FormatLoss(double loss) {
  if (loss == 0 || !std::isfinite(loss)) return "-";
  return absl::StrFormat("%.4f", loss);
}

std::string FormatBytes(int64_t bytes) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  double v = static_cast<double>(bytes);
  int u = 0;
  while (v >= 1024 && u < 4) {
    v /= 1024;
    ++u;
  }
  return u == 0 ? absl::StrCat(bytes, " B") : absl::StrFormat("%.1f %s", v, units[u]);
}

std::string DescribeRank(const lora::v1::RankStatus& r) {
  std::string state;
  switch (r.state()) {
    case lora::v1::RANK_ASSIGNED:
      state = "assigned";
      break;
    case lora::v1::RANK_STARTED:
      state = "starting";
      break;
    case lora::v1::RANK_RUNNING:
      state = "running";
      break;
    case lora::v1::RANK_EXITED:
      state = r.signal() != 0 ? absl::StrCat("killed by signal ", r.signal())
                              : absl::StrCat("exited ", r.exit_code());
      break;
    default:
      state = "pending";
  }
  std::string line = absl::StrCat(r.worker_id().empty() ? "-" : r.worker_id(), "  ", state);
  if (r.step() > 0) absl::StrAppend(&line, "  step ", r.step());
  if (r.has_last_seen_time()) absl::StrAppend(&line, "  seen ", Age(r.last_seen_time()), " ago");
  if (r.step_seconds() > 0)
    absl::StrAppend(&line, absl::StrFormat("  %.3f s/step", r.step_seconds()));
  if (r.peak_rss_bytes() > 0) absl::StrAppend(&line, "  rss ", FormatBytes(r.peak_rss_bytes()));
  if (r.parameter_bytes() > 0)
    absl::StrAppend(&line, "  params ", FormatBytes(r.parameter_bytes()));
  if (r.bytes_sent() > 0) absl::StrAppend(&line, "  sent ", FormatBytes(r.bytes_sent()));
  return line;
}

std::string JobName(const std::string& arg) {
  return absl::StartsWith(arg, "jobs/") ? arg : "jobs/" + arg;
}

}  // namespace lora::loractl
