#include "server/core/engine_event_translator.h"

#include <algorithm>
#include <set>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "server/core/retry_policy.h"
#include "server/store/job_store.h"

namespace lora::server {
namespace {

namespace ev1 = lora::engine::v1;
using lora::v1::JobEvent;

// The file that lists a checkpoint's files with their digests (written last by the engine).
constexpr char kCheckpointManifest[] = "manifest.json";

// The stored copies of the files a worker says it uploaded, if all are there with the digest
// it announced; else `*problem` says which is not.
bool VerifiedFiles(const google::protobuf::RepeatedPtrField<ev1::FileDigest>& uploaded,
                   const ArtifactLookup& lookup, std::vector<lora::v1::ArtifactFile>* files,
                   std::string* problem) {
  for (const ev1::FileDigest& f : uploaded) {
    auto stored = lookup(f.path());
    if (!stored.ok() || stored->sha256() != f.sha256()) {
      *problem = absl::StrCat(f.path(), " was not uploaded intact");
      return false;
    }
    files->push_back(*stored);
  }
  return true;
}

JobEvent LogEvent(const std::string& level, const std::string& message, int rank) {
  JobEvent e;
  e.mutable_log()->set_level(level);
  e.mutable_log()->set_message(message);
  e.mutable_log()->set_rank(rank);
  return e;
}

}  // namespace

TranslatedEvent TranslateEngineEvent(const ev1::EngineEvent& event, int rank, int world_size,
                                     const ArtifactLookup& lookup, int64_t now_us,
                                     lora::v1::Job* job) {
  TranslatedEvent out;
  lora::v1::JobProgress* p = job->mutable_progress();
  if (rank < job->ranks_size()) {
    lora::v1::RankStatus* status = job->mutable_ranks(rank);
    status->set_state(lora::v1::RANK_RUNNING);
    *status->mutable_last_seen_time() = FromMicros(now_us);
    if (event.has_step()) {
      status->set_step(std::max(status->step(), event.step().step()));
      status->set_step_seconds(event.step().step_seconds());
    } else if (event.has_rank_status()) {
      const ev1::RankStatus& r = event.rank_status();
      status->set_step(std::max(status->step(), r.step()));
      status->set_step_seconds(r.step_seconds());
      status->set_peak_rss_bytes(r.peak_rss_bytes());
      status->set_parameter_bytes(r.parameter_bytes());
      status->set_bytes_sent(r.bytes_sent());
    }
  }
  switch (event.kind_case()) {
    case ev1::EngineEvent::kStep: {
      if (rank != 0) break;
      const ev1::Step& s = event.step();
      JobEvent e;
      lora::v1::StepMetrics* m = e.mutable_metrics();
      m->set_step(s.step());
      m->set_total_steps(s.total_steps());
      m->set_loss(s.loss());
      m->set_grad_norm(s.grad_norm());
      m->set_lr(s.lr());
      m->set_tokens_per_second(s.tokens_per_second());
      m->set_elapsed_seconds(s.elapsed_seconds());
      m->set_eta_seconds(s.eta_seconds());
      m->set_tokens(s.tokens());
      p->set_step(s.step());
      p->set_total_steps(s.total_steps());
      p->set_loss(s.loss());
      p->set_lr(s.lr());
      p->set_tokens_per_second(s.tokens_per_second());
      p->set_eta_seconds(s.eta_seconds());
      p->set_elapsed_seconds(s.elapsed_seconds());
      p->set_tokens(s.tokens());
      out.events.push_back(std::move(e));
      break;
    }
    case ev1::EngineEvent::kEval: {
      if (rank != 0) break;
      JobEvent e;
      e.mutable_eval()->set_step(event.eval().step());
      e.mutable_eval()->set_eval_loss(event.eval().eval_loss());
      e.mutable_eval()->set_eval_tokens(event.eval().eval_tokens());
      p->set_eval_loss(event.eval().eval_loss());
      if (event.eval().step() == 0) p->set_initial_eval_loss(event.eval().eval_loss());
      out.events.push_back(std::move(e));
      break;
    }
    case ev1::EngineEvent::kCheckpoint: {
      if (rank != 0) break;
      const ev1::Checkpoint& c = event.checkpoint();
      std::vector<lora::v1::ArtifactFile> files;
      std::string problem;
      if (c.uploaded().empty()) problem = "no file was uploaded";
      // Whole or not at all: every file the engine wrote, and the manifest (a resumed rank only
      // trusts a step directory that has one), must have arrived. An upload cut short by a
      // restart leaves the checkpoint unrecorded rather than recorded without its manifest.
      std::set<std::string> arrived;
      for (const ev1::FileDigest& f : c.uploaded()) arrived.insert(f.path());
      std::vector<std::string> required = {c.job_path() + "/" + kCheckpointManifest};
      for (const ev1::FileDigest& f : c.files()) required.push_back(c.job_path() + "/" + f.path());
      for (const std::string& path : required) {
        if (problem.empty() && !arrived.count(path)) problem = path + " was not uploaded";
      }
      if (!problem.empty() || !VerifiedFiles(c.uploaded(), lookup, &files, &problem)) {
        out.events.push_back(LogEvent(
            "warning", absl::StrCat("checkpoint at step ", c.step(), " not recorded: ", problem),
            rank));
        break;
      }
      lora::v1::Checkpoint record;
      record.set_step(c.step());
      record.set_path(c.job_path());
      record.set_bytes(c.bytes());
      record.set_manifest_sha256(c.sha256());
      record.set_attempt(job->attempt());
      *record.mutable_create_time() = FromMicros(now_us);
      for (auto& f : files) *record.add_files() = std::move(f);
      job->set_latest_checkpoint_step(std::max(job->latest_checkpoint_step(), c.step()));
      JobEvent e;
      *e.mutable_checkpoint() = record;
      out.events.push_back(std::move(e));
      if (c.drain()) {
        out.events.push_back(LogEvent(
            "info", absl::StrCat("drain checkpoint at step ", c.step(), " (planned stop)"), rank));
      }
      out.checkpoint = std::move(record);
      break;
    }
    case ev1::EngineEvent::kFinished: {
      if (rank != 0) break;
      std::vector<lora::v1::ArtifactFile> files;
      std::string problem;
      if (!event.finished().not_uploaded().empty()) {
        problem = absl::StrCat(event.finished().not_uploaded(0), " was not uploaded");
      }
      if (problem.empty() && VerifiedFiles(event.finished().uploaded(), lookup, &files, &problem)) {
        job->clear_outputs();
        for (auto& f : files) *job->add_outputs() = f;
        job->set_result_reported(true);
        out.rank0_finished = true;
        out.events.push_back(LogEvent(
            "info", absl::StrCat("finished; ", files.size(), " output files uploaded"), rank));
      } else {
        out.failure_reason = absl::StrCat("outputs incomplete: ", problem);
        // Lost in transit (a restart, a network failure): another attempt delivers them.
        out.failure_code = absl::StatusCode::kUnavailable;
        job->mutable_error()->set_code(static_cast<int>(out.failure_code));
        job->mutable_error()->set_message(*out.failure_reason);
        out.events.push_back(LogEvent("error", *out.failure_reason, rank));
      }
      break;
    }
    case ev1::EngineEvent::kFailed: {
      // Multi-rank engines name the rank that failed first ("rank 2: ..."), which need not be
      // the rank reporting it.
      const std::string& reason =
          event.failed().reason().empty() ? std::string("failed") : event.failed().reason();
      out.failure_reason = absl::StrCat(world_size > 1 && !absl::StartsWith(reason, "rank ")
                                            ? absl::StrCat("rank ", rank, ": ")
                                            : "",
                                        reason);
      out.failure_code = StatusCodeFromName(event.failed().code());
      // A failure always carries an error code; an unnamed or unknown one is ours to explain.
      if (out.failure_code == absl::StatusCode::kOk ||
          (out.failure_code == absl::StatusCode::kUnknown && event.failed().code() != "UNKNOWN")) {
        out.failure_code = absl::StatusCode::kInternal;
      }
      job->mutable_error()->set_code(static_cast<int>(out.failure_code));
      job->mutable_error()->set_message(*out.failure_reason);
      out.events.push_back(LogEvent("error", *out.failure_reason, rank));
      break;
    }
    case ev1::EngineEvent::kLog:
      out.events.push_back(LogEvent(event.log().level().empty() ? "info" : event.log().level(),
                                    event.log().message(), rank));
      break;
    case ev1::EngineEvent::kStarted: {
      if (rank != 0) break;
      const ev1::Started& s = event.started();
      out.events.push_back(LogEvent(
          "info",
          absl::StrCat("rank ", rank, " started: ", s.base_model(), ", ", s.trainable_parameters(),
                       " trainable parameters, steps ", s.start_step(), "..", s.total_steps()),
          rank));
      break;
    }
    case ev1::EngineEvent::kRankStatus:
    case ev1::EngineEvent::KIND_NOT_SET:
      break;
  }
  return out;
}

}  // namespace lora::server
