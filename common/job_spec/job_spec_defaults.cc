// Documented defaults of the job spec (docs/JOB_SPEC.md mirrors this file).
#include "common/job_spec/job_spec.h"

namespace lora {

void ApplyJobSpecDefaults(lora::v1::JobSpec* spec) {
  auto* job = spec->mutable_job();
  if (job->kind() == lora::v1::JOB_KIND_UNSPECIFIED) job->set_kind(lora::v1::JOB_KIND_TRAIN);

  auto* model = spec->mutable_model();
  if (model->name().empty()) model->set_name("llama3");
  if (model->flavor().empty() && model->path().empty()) model->set_flavor("debugmodel");
  // A checkpoint brings its own tokenizer (found in model.path by the engine).
  if (model->tokenizer().empty() && model->path().empty()) model->set_tokenizer("byte");

  auto* lora = spec->mutable_lora();
  if (!lora->has_rank()) lora->set_rank(8);
  if (!lora->has_alpha()) lora->set_alpha(16.0);
  if (lora->target_modules().empty() && lora->target_modules_regex().empty()) {
    for (const char* m :
         {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}) {
      lora->add_target_modules(m);
    }
  }
  if (lora->init().empty()) lora->set_init("kaiming");

  auto* opt = spec->mutable_optimizer();
  if (opt->name().empty()) opt->set_name("AdamW");
  if (!opt->has_lr()) opt->set_lr(8e-4);
  if (opt->betas().empty()) {
    opt->add_betas(0.9);
    opt->add_betas(0.999);
  }
  if (!opt->has_eps()) opt->set_eps(1e-8);

  auto* sched = spec->mutable_lr_scheduler();
  if (!sched->has_warmup_steps()) sched->set_warmup_steps(2);
  if (sched->decay_type().empty()) sched->set_decay_type("cosine");

  auto* training = spec->mutable_training();
  if (!training->has_steps() && !training->has_epochs()) training->set_steps(10);
  if (!training->has_seq_len()) training->set_seq_len(256);
  if (!training->has_local_batch_size()) training->set_local_batch_size(8);
  if (!training->has_gradient_accumulation_steps()) training->set_gradient_accumulation_steps(1);
  if (!training->has_max_norm()) training->set_max_norm(1.0);
  if (training->mixed_precision().empty()) training->set_mixed_precision("bf16");
  if (!training->has_seed()) training->set_seed(42);
  if (training->activation_checkpoint().empty()) training->set_activation_checkpoint("none");
  if (!training->has_num_threads()) training->set_num_threads(0);

  auto* data = spec->mutable_dataset();
  if (data->format().empty()) data->set_format("auto");
  if (!data->has_pack()) data->set_pack(true);
  if (!data->has_validation_fraction()) {
    data->set_validation_fraction(data->validation_path().empty() ? 0.05 : 0.0);
  }
  if (!data->has_validation_interval()) data->set_validation_interval(5);
  if (!data->has_validation_max_batches()) data->set_validation_max_batches(0);
  if (!data->has_num_examples()) data->set_num_examples(20000);

  auto* par = spec->mutable_parallelism();
  if (!par->has_data_parallel_replicate_degree()) par->set_data_parallel_replicate_degree(1);
  if (!par->has_data_parallel_shard_degree()) par->set_data_parallel_shard_degree(-1);
  if (!par->has_tensor_parallel_degree()) par->set_tensor_parallel_degree(1);
  if (!par->has_pipeline_parallel_degree()) par->set_pipeline_parallel_degree(1);
  if (par->pipeline_parallel_schedule().empty()) par->set_pipeline_parallel_schedule("1F1B");
  if (!par->has_pipeline_parallel_microbatches()) par->set_pipeline_parallel_microbatches(4);
  if (!par->has_context_parallel_degree()) par->set_context_parallel_degree(1);
  if (par->context_parallel_method().empty()) par->set_context_parallel_method("allgather");
  if (par->fsdp_reshard_after_forward().empty()) par->set_fsdp_reshard_after_forward("default");

  auto* ckpt = spec->mutable_checkpoint();
  if (!ckpt->has_interval()) ckpt->set_interval(5);
  if (!ckpt->has_keep_latest()) ckpt->set_keep_latest(3);
  if (ckpt->export_().empty()) ckpt->add_export_("adapter");
  if (ckpt->export_dtype().empty()) ckpt->set_export_dtype("float32");

  auto* res = spec->mutable_resources();
  if (!res->has_world_size()) res->set_world_size(1);
  if (res->device().empty()) res->set_device("cpu");
  if (!res->has_collective_timeout_seconds()) res->set_collective_timeout_seconds(300);
}

}  // namespace lora
