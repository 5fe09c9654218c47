// Test helper: one Gloo process group of `world` ranks, each rank a thread of this process
// (TCPStore on loopback, port 0), with a dist::Group over it.
#ifndef LORA_TESTS_UNIT_GLOO_RANKS_H_
#define LORA_TESTS_UNIT_GLOO_RANKS_H_

#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>

#include <functional>
#include <string>
#include <thread>
#include <vector>

#include "gtest/gtest.h"
#include "worker/engine/dist/comm.h"

namespace lora::dist {

// Runs `body(group)` on `world` threads, each a rank of one Gloo group.
inline void RunRanks(int world, const std::function<void(Group&)>& body) {
  c10d::TCPStoreOptions server_options;
  server_options.port = 0;
  server_options.isServer = true;
  server_options.numWorkers = world;
  server_options.waitWorkers = false;
  auto server = c10::make_intrusive<c10d::TCPStore>("127.0.0.1", server_options);
  const uint16_t port = server->getPort();
  std::vector<std::thread> threads;
  std::vector<std::string> errors(static_cast<size_t>(world));
  for (int r = 0; r < world; ++r) {
    threads.emplace_back([&, r] {
      try {
        c10::intrusive_ptr<c10d::Store> store = server;
        if (r > 0) {
          c10d::TCPStoreOptions o;
          o.port = port;
          o.isServer = false;
          store = c10::make_intrusive<c10d::TCPStore>("127.0.0.1", o);
        }
        auto opts = c10d::ProcessGroupGloo::Options::create(std::chrono::seconds(30));
        opts->devices.push_back(c10d::ProcessGroupGloo::createDeviceForHostname("127.0.0.1"));
        auto pg = c10::make_intrusive<c10d::ProcessGroupGloo>(
            c10::make_intrusive<c10d::PrefixStore>("test", store), r, world, opts);
        std::vector<int> members;
        for (int i = 0; i < world; ++i) members.push_back(i);
        Group group(pg, r, world, std::chrono::seconds(30), members);
        body(group);
      } catch (const std::exception& e) {
        errors[static_cast<size_t>(r)] = e.what();
      }
    });
  }
  for (auto& t : threads) t.join();
  for (int r = 0; r < world; ++r) EXPECT_EQ(errors[static_cast<size_t>(r)], "") << "rank " << r;
}

}  // namespace lora::dist

#endif  // LORA_TESTS_UNIT_GLOO_RANKS_H_
