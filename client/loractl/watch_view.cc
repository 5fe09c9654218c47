#include "client/loractl/watch_view.h"

#include <algorithm>
#include <cmath>
#include <ctime>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "client/loractl/output.h"

namespace lora::loractl {
namespace {

std::string Timestamp(const google::protobuf::Timestamp& t) {
  std::time_t s = static_cast<std::time_t>(t.seconds());
  std::tm tm;
  gmtime_r(&s, &tm);
  char buf[32];
  std::strftime(buf, sizeof(buf), "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

std::string Thousands(double v) {
  std::string digits = absl::StrCat(static_cast<int64_t>(v + 0.5));
  std::string out;
  for (size_t i = 0; i < digits.size(); ++i) {
    if (i > 0 && (digits.size() - i) % 3 == 0) out += ',';
    out += digits[i];
  }
  return out;
}

}  // namespace

std::string DescribeEvent(const lora::v1::JobEvent& e) {
  if (e.has_state_change()) {
    const bool first = e.state_change().from() == lora::v1::JOB_STATE_UNSPECIFIED;
    return absl::StrCat("state ", first ? "" : StateName(e.state_change().from()) + " -> ",
                        StateName(e.state_change().to()),
                        e.state_change().reason().empty() ? "" : ": " + e.state_change().reason());
  }
  if (e.has_metrics()) {
    const auto& m = e.metrics();
    return absl::StrFormat("step %d/%d loss %.4f grad_norm %.3f lr %.2e %s tok/s eta %s", m.step(),
                           m.total_steps(), m.loss(), m.grad_norm(), m.lr(),
                           Thousands(m.tokens_per_second()), Duration(m.eta_seconds()));
  }
  if (e.has_eval())
    return absl::StrFormat("eval step %d eval_loss %.4f", e.eval().step(), e.eval().eval_loss());
  if (e.has_checkpoint()) {
    return absl::StrFormat("checkpoint step %d %s (%d files, %d bytes)", e.checkpoint().step(),
                           e.checkpoint().path(), e.checkpoint().files_size(),
                           e.checkpoint().bytes());
  }
  if (e.has_log()) return absl::StrCat(e.log().level(), ": ", e.log().message());
  return "event";
}

std::string WatchView::Sparkline(const std::deque<double>& values, size_t width) {
  static const char* kLevels[] = {"▁", "▂", "▃", "▄", "▅", "▆", "▇", "█"};
  if (values.empty()) return "";
  size_t start = values.size() > width ? values.size() - width : 0;
  double lo = values[start], hi = values[start];
  for (size_t i = start; i < values.size(); ++i)
    lo = std::min(lo, values[i]), hi = std::max(hi, values[i]);
  std::string out;
  for (size_t i = start; i < values.size(); ++i) {
    int level = hi > lo ? static_cast<int>(std::lround((values[i] - lo) / (hi - lo) * 7)) : 0;
    out += kLevels[std::clamp(level, 0, 7)];
  }
  return out;
}

WatchView::WatchView(std::FILE* out, bool tty, int width)
    : out_(out), tty_(tty), width_(std::max(width, 40)) {}

WatchView::~WatchView() {
  if (status_drawn_) EndLiveLine();
}

void WatchView::Start(const lora::v1::Job& job) {
  name_ = job.name();
  state_ = job.state();
  total_ = job.progress().total_steps();
  step_ = job.progress().step();
  if (tty_) DrawStatus();
}

void WatchView::Line(const std::string& text) {
  if (tty_) {
    std::fputs("\r\x1b[2K", out_);  // clear the status line, print the event, redraw below it
    std::fputs(text.c_str(), out_);
    std::fputs("\n", out_);
    DrawStatus();
  } else {
    std::fputs(text.c_str(), out_);
    std::fputs("\n", out_);
    std::fflush(out_);
  }
}

std::string WatchView::StatusText() const {
  const int bar = 24;
  const double frac =
      total_ > 0 ? std::clamp(static_cast<double>(step_) / static_cast<double>(total_), 0.0, 1.0)
                 : (state_ == lora::v1::SUCCEEDED ? 1.0 : 0.0);
  const int filled = static_cast<int>(frac * bar + 0.5);
  std::string s = absl::StrCat(name_, "  ", StateName(state_), "  [");
  for (int i = 0; i < bar; ++i) s += i < filled ? "█" : "░";
  absl::StrAppend(&s, "] ", static_cast<int>(frac * 100 + 0.5), "%");
  if (total_ > 0) absl::StrAppend(&s, "  step ", step_, "/", total_);
  if (loss_ > 0) absl::StrAppend(&s, absl::StrFormat("  loss %.4f", loss_));
  if (eval_loss_ > 0) absl::StrAppend(&s, absl::StrFormat("  eval %.4f", eval_loss_));
  if (tps_ > 0) absl::StrAppend(&s, "  ", Thousands(tps_), " tok/s");
  if (eta_ >= 0 && state_ == lora::v1::RUNNING) absl::StrAppend(&s, "  ETA ", Duration(eta_));
  if (!losses_.empty()) absl::StrAppend(&s, "  ", Sparkline(losses_, 20));
  return s;
}

void WatchView::DrawStatus() {
  std::fputs("\r\x1b[2K", out_);
  std::fputs(StatusText().c_str(), out_);
  std::fflush(out_);
  status_drawn_ = true;
  LiveLineDrawn(out_, [this] { DrawStatus(); });
}

void WatchView::OnEvent(const lora::v1::JobEvent& e) {
  if (e.has_state_change()) state_ = e.state_change().to();
  if (e.has_metrics()) {
    step_ = e.metrics().step();
    total_ = e.metrics().total_steps();
    loss_ = e.metrics().loss();
    tps_ = e.metrics().tokens_per_second();
    eta_ = e.metrics().eta_seconds();
    losses_.push_back(loss_);
    if (losses_.size() > 200) losses_.pop_front();
  }
  if (e.has_eval()) eval_loss_ = e.eval().eval_loss();
  const std::string text = absl::StrCat(tty_ ? "" : Timestamp(e.time()) + " ",
                                        tty_ ? "" : name_ + " ", DescribeEvent(e));
  // On a terminal, step metrics only move the status line; everything else is worth a line.
  if (tty_ && e.has_metrics()) {
    DrawStatus();
  } else {
    Line(text);
  }
}

void WatchView::Finish(const lora::v1::Job& job) {
  state_ = job.state();
  if (tty_) {
    DrawStatus();
    std::fputs("\n", out_);
    status_drawn_ = false;
    LiveLineGone();
  }
  std::string summary = absl::StrCat(job.name(), " ", StateName(job.state()));
  if (job.state() == lora::v1::FAILED) absl::StrAppend(&summary, ": ", job.error().message());
  if (job.progress().eval_loss() > 0) {
    absl::StrAppend(&summary,
                    absl::StrFormat(" (eval loss %.4f, from %.4f)", job.progress().eval_loss(),
                                    job.progress().initial_eval_loss()));
  }
  std::fputs(summary.c_str(), out_);
  std::fputs("\n", out_);
  std::fflush(out_);
}

}  // namespace lora::loractl
