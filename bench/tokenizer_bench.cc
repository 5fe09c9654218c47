// Encoding throughput of lora's tokenizer.json support against the `tokenizers` library (Rust,
// one thread), on the Llama 3 style tokenizer of tests/python/make_tokenizers.py.
//
//   build/bench/tokenizer_bench                    # 10 MB made from
//   tests/data/tokenizer_corpus.txt build/bench/tokenizer_bench --corpus big.txt   # or any UTF-8
//   text, one document per line build/bench/tokenizer_bench --mb 50
//
// The made corpus repeats the shipped one with perturbed digits, case and suffixes, so that
// both caches see new words throughout. Both sides encode every line without special tokens;
// the table gives the best of 3 passes each (lora's first, cold-cache pass too) and checks
// that both produced the same number of tokens and the same sum of ids.
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "worker/engine/data/tokenizer.h"

namespace {

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::vector<std::string> Lines(const std::string& text) {
  std::vector<std::string> lines;
  size_t begin = 0;
  for (size_t nl; (nl = text.find('\n', begin)) != std::string::npos; begin = nl + 1)
    lines.push_back(text.substr(begin, nl - begin));
  if (begin < text.size()) lines.push_back(text.substr(begin));
  return lines;
}

// ASCII-only edits keep the text valid UTF-8.
std::string MakeCorpus(const std::vector<std::string>& seed, size_t target_bytes) {
  std::mt19937_64 rng(11);
  std::string out;
  out.reserve(target_bytes + (1 << 16));
  for (int round = 0; out.size() < target_bytes; ++round) {
    for (const std::string& line : seed) {
      std::string l = line;
      if (round > 0) {
        for (char& c : l) {
          if (c >= '0' && c <= '9' && rng() % 2) c = static_cast<char>('0' + rng() % 10);
          if (c >= 'a' && c <= 'z' && rng() % 40 == 0) c = static_cast<char>(c - 'a' + 'A');
        }
        if (rng() % 3 == 0) l += " #" + std::to_string(rng() % 100000);
      }
      out += l;
      out += '\n';
      if (out.size() >= target_bytes) break;
    }
  }
  return out;
}

double Seconds(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

}  // namespace

int main(int argc, char** argv) {
  std::string corpus_path;
  double mb = 10;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--corpus" && i + 1 < argc) {
      corpus_path = argv[++i];
    } else if (arg == "--mb" && i + 1 < argc) {
      mb = std::atof(argv[++i]);
    } else {
      std::fprintf(stderr, "usage: %s [--corpus FILE] [--mb N]\n", argv[0]);
      return 2;
    }
  }
  const std::string src = LORA_SOURCE_DIR;
  const std::filesystem::path dir =
      std::filesystem::temp_directory_path() / ("tokenizer_bench." + std::to_string(getpid()));
  std::filesystem::create_directories(dir);
  const std::string big = corpus_path.empty() ? (dir / "corpus.txt").string() : corpus_path;
  if (corpus_path.empty()) {
    const auto seed = Lines(ReadFile(src + "/tests/data/tokenizer_corpus.txt"));
    std::ofstream(big, std::ios::binary) << MakeCorpus(seed, static_cast<size_t>(mb * 1e6));
  }

  const std::string cmd = std::string("RAYON_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false ") +
                          LORA_PYTHON + " " + src + "/bench/python/tokenizer_bench_ref.py" +
                          " --train-corpus " + src + "/tests/data/tokenizer_corpus.txt --out " +
                          (dir / "tok").string() + " --bench-corpus " + big + " > " +
                          (dir / "ref.json").string();
  if (std::system(cmd.c_str()) != 0) {
    std::fprintf(stderr, "the tokenizers side failed: %s\n", cmd.c_str());
    return 1;
  }
  const nlohmann::json ref = nlohmann::json::parse(ReadFile((dir / "ref.json").string()));

  auto tok = lora::MakeTokenizer((dir / "tok").string());
  if (!tok.ok()) {
    std::fprintf(stderr, "%s\n", tok.status().ToString().c_str());
    return 1;
  }
  const auto lines = Lines(ReadFile(big));
  size_t bytes = 0;
  for (const auto& l : lines) bytes += l.size();
  double first = 0, best = 1e30;
  size_t tokens = 0;
  int64_t id_sum = 0;
  for (int pass = 0; pass < 3; ++pass) {
    tokens = 0;
    id_sum = 0;
    const auto t0 = std::chrono::steady_clock::now();
    for (const std::string& line : lines) {
      const std::vector<int64_t> ids = (*tok)->Encode(line);
      tokens += ids.size();
      for (int64_t id : ids) id_sum += id;
    }
    const double s = Seconds(t0);
    if (pass == 0) first = s;
    best = std::min(best, s);
  }

  const double ref_batch = ref["encode_batch_s"], ref_loop = ref["encode_loop_s"];
  const double ref_best = std::min(ref_batch, ref_loop);
  const double mbytes = static_cast<double>(bytes) / 1e6;
  std::printf("corpus: %zu lines, %.1f MB; Llama 3 style tokenizer (%lld ids); one thread\n",
              lines.size(), mbytes, static_cast<long long>((*tok)->vocab_size()));
  std::printf("%-38s %10s %12s %8s\n", "encoder", "MB/s", "tokens/s", "ratio");
  auto row = [&](const char* name, double s) {
    std::printf("%-38s %10.2f %12.0f %8.2f\n", name, mbytes / s, tokens / s, ref_best / s);
  };
  row("tokenizers encode_batch (1 thread)", ref_batch);
  row("tokenizers encode loop", ref_loop);
  row("lora Encode, first pass (cold cache)", first);
  row("lora Encode, best of 3", best);
  const bool same = tokens == ref["tokens"].get<size_t>() && id_sum == ref["id_sum"].get<int64_t>();
  std::printf("ratio: against the faster tokenizers row; same tokens as tokenizers: %s (%zu)\n",
              same ? "yes" : "NO", tokens);
  std::filesystem::remove_all(dir);
  return same ? 0 : 1;
}
