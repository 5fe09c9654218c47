// Safetensors read throughput against `cat FILE > /dev/null` on the same file, same run.
//
//   safetensors_read_bench FILE [--repeat N]
//
// Rows: cat and dd (page cache -> /dev/null), our reader copying every tensor into a tensor of
// its stored dtype, and into float32 (what loading a bf16 checkpoint for fp32 training does).
// Each row is the best of N runs, interleaved so drift hits all rows alike.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <string>
#include <thread>

#include "absl/strings/str_format.h"
#include "common/safetensors.h"
#include "worker/engine/model/tensor_io.h"

namespace {

double Now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

double TimeCat(const std::string& path) {
  double t0 = Now();
  std::string cmd = "cat '" + path + "' > /dev/null";
  if (std::system(cmd.c_str()) != 0) {
    std::cerr << "cat failed\n";
    std::exit(1);
  }
  return Now() - t0;
}

// Copies every tensor of `path` into `dst` (allocated on first use, reused after, so later runs
// measure reading and copying rather than the kernel handing out fresh pages).
double TimeRead(const std::string& path, bool to_fp32, std::vector<torch::Tensor>* reuse) {
  double t0 = Now();
  auto file = lora::SafetensorsFile::Open(path);
  if (!file.ok()) {
    std::cerr << file.status() << "\n";
    std::exit(1);
  }
  const auto& tensors = (*file)->tensors();
  if (!tensors.empty()) (*file)->Prefetch(tensors[0]);
  for (size_t i = 0; i < tensors.size(); ++i) {
    const lora::TensorInfo& info = tensors[i];
    if (i + 1 < tensors.size()) (*file)->Prefetch(tensors[i + 1]);
    auto dtype = lora::TorchDtype(info.dtype);
    torch::Tensor dst;
    if (reuse != nullptr && i < reuse->size()) {
      dst = (*reuse)[i];
    } else {
      dst = torch::empty(info.shape,
                         torch::TensorOptions().dtype(to_fp32 ? torch::kFloat32 : *dtype));
      lora::AdviseHugePages(dst);  // as LoadStateDict does
      if (reuse != nullptr) reuse->push_back(dst);
    }
    absl::Status s = lora::CopyIntoTensor(**file, info, dst);
    if (!s.ok()) {
      std::cerr << s << "\n";
      std::exit(1);
    }
  }
  return Now() - t0;
}

// Empties the page cache so the next read comes from disk. Needs root; false otherwise.
bool DropCaches() {
  if (std::system("sync") != 0) return false;
  FILE* f = std::fopen("/proc/sys/vm/drop_caches", "w");
  if (f == nullptr) return false;
  bool ok = std::fputs("3\n", f) >= 0;
  return std::fclose(f) == 0 && ok;
}

double TimeDd(const std::string& path) {
  double t0 = Now();
  std::string cmd = "dd if='" + path + "' of=/dev/null bs=4M status=none";
  if (std::system(cmd.c_str()) != 0) std::exit(1);
  return Now() - t0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::cerr << "usage: safetensors_read_bench FILE [--repeat N]\n";
    return 2;
  }
  std::string path = argv[1];
  int repeat = 5;
  if (argc >= 4 && std::string(argv[2]) == "--repeat") repeat = std::atoi(argv[3]);
  at::set_num_threads(static_cast<int>(std::thread::hardware_concurrency()));
  auto file = lora::SafetensorsFile::Open(path);
  if (!file.ok()) {
    std::cerr << file.status() << "\n";
    return 1;
  }
  double bytes = 0;
  for (const auto& t : (*file)->tensors()) bytes += static_cast<double>(t.nbytes());
  file->reset();
  TimeCat(path);  // warm the page cache so every row reads from memory
  double best_cat = 1e30, best_dd = 1e30, best_fresh = 1e30, best_native = 1e30, best_fp32 = 1e30;
  std::vector<torch::Tensor> native_dst, fp32_dst;
  TimeRead(path, false, &native_dst);
  TimeRead(path, true, &fp32_dst);
  for (int i = 0; i < repeat; ++i) {
    best_cat = std::min(best_cat, TimeCat(path));
    best_dd = std::min(best_dd, TimeDd(path));
    best_native = std::min(best_native, TimeRead(path, false, &native_dst));
    best_fp32 = std::min(best_fp32, TimeRead(path, true, &fp32_dst));
    best_fresh = std::min(best_fresh, TimeRead(path, false, nullptr));
  }
  fp32_dst.clear();
  // Cold cache: each row starts from an empty page cache (root only).
  double cold_cat = 1e30, cold_native = 1e30;
  bool cold = DropCaches();
  for (int i = 0; cold && i < repeat; ++i) {
    cold = DropCaches();
    cold_cat = std::min(cold_cat, TimeCat(path));
    cold = cold && DropCaches();
    cold_native = std::min(cold_native, TimeRead(path, false, &native_dst));
  }
  const double mb = bytes / 1e6;
  std::cout << absl::StrFormat("file: %s (%.1f MB of tensor data), best of %d, warm page cache\n",
                               path, mb, repeat);
  std::cout << absl::StrFormat("%-32s %10s %10s %8s\n", "method", "seconds", "MB/s", "vs cat");
  auto row = [&](const char* name, double s) {
    std::cout << absl::StrFormat("%-32s %10.3f %10.0f %8.2f\n", name, s, mb / s, best_cat / s);
  };
  row("cat FILE > /dev/null", best_cat);
  row("dd bs=4M of=/dev/null", best_dd);
  row("SafetensorsFile -> stored dtype", best_native);
  row("SafetensorsFile -> float32", best_fp32);
  row("SafetensorsFile -> fresh tensors", best_fresh);
  if (cold) {
    std::cout << "cold page cache (dropped before each run):\n";
    const double cat_cold = cold_cat;
    auto cold_row = [&](const char* name, double s) {
      std::cout << absl::StrFormat("%-32s %10.3f %10.0f %8.2f\n", name, s, mb / s, cat_cold / s);
    };
    cold_row("cat FILE > /dev/null (cold)", cold_cat);
    cold_row("SafetensorsFile -> stored (cold)", cold_native);
  } else {
    std::cout << "cold-cache rows skipped (dropping the page cache needs root)\n";
  }
  return 0;
}
