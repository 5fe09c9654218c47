// How `loractl watch` shows a job. On a terminal: event lines scroll above one live status
// line (progress bar, step/total, loss, eval loss, tokens/s, ETA, loss sparkline), redrawn in
// place. Elsewhere (pipes, files, CI logs): one plain line per event. The status line is
// registered as the terminal's live line (output.h), so that errors and notices on stderr
// never print onto it.
#ifndef LORA_CLIENT_LORACTL_WATCH_VIEW_H_
#define LORA_CLIENT_LORACTL_WATCH_VIEW_H_

#include <cstdio>
#include <deque>
#include <string>

#include "lora/v1/job.pb.h"

namespace lora::loractl {

class WatchView {
 public:
  WatchView(std::FILE* out, bool tty, int width = 100);
  ~WatchView();  // ends a status line still drawn (the shell prompt goes below it)
  WatchView(const WatchView&) = delete;
  WatchView& operator=(const WatchView&) = delete;
  void Start(const lora::v1::Job& job);
  void OnEvent(const lora::v1::JobEvent& event);
  void Finish(const lora::v1::Job& job);
  // Unicode block sparkline of the recent values (8 levels).
  static std::string Sparkline(const std::deque<double>& values, size_t width);

 private:
  void Line(const std::string& text);  // an event line (above the status line on a TTY)
  void DrawStatus();
  std::string StatusText() const;

  std::FILE* out_;
  bool tty_;
  int width_;
  std::string name_;
  lora::v1::JobState state_ = lora::v1::JOB_STATE_UNSPECIFIED;
  int64_t step_ = 0, total_ = 0;
  double loss_ = 0, eval_loss_ = 0, tps_ = 0, eta_ = -1;
  std::deque<double> losses_;
  bool status_drawn_ = false;
};

// Plain text of one event ("step 12/300 loss 1.5234 ...").
std::string DescribeEvent(const lora::v1::JobEvent& event);

}  // namespace lora::loractl

#endif  // LORA_CLIENT_LORACTL_WATCH_VIEW_H_
