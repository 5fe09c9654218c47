// The device mesh (rank <-> coordinates, groups) and the pipeline stage split.
#include "worker/engine/dist/mesh.h"

#include <set>

#include "common/llama_config.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "worker/engine/dist/parallel_llama.h"

namespace lora::dist {
namespace {

using ::testing::ElementsAre;

TEST(MeshTest, CoordinatesRoundTripWithTensorParallelInnermost) {
  MeshShape shape;
  shape.pp = 2;
  shape.shard = 2;
  shape.tp = 2;
  Mesh mesh(shape);
  ASSERT_EQ(shape.world(), 8);
  for (int r = 0; r < 8; ++r) EXPECT_EQ(mesh.Rank(mesh.Coord(r)), r);
  // Neighbouring ranks share a TP group; pipeline stages are the outermost split.
  EXPECT_THAT(mesh.GroupOf(0, {Dim::kTp}), ElementsAre(0, 1));
  EXPECT_THAT(mesh.GroupOf(5, {Dim::kTp}), ElementsAre(4, 5));
  EXPECT_THAT(mesh.GroupOf(1, {Dim::kShard}), ElementsAre(1, 3));
  EXPECT_THAT(mesh.GroupOf(2, {Dim::kPp}), ElementsAre(2, 6));
  EXPECT_THAT(mesh.GroupOf(6, {Dim::kShard, Dim::kTp}), ElementsAre(4, 5, 6, 7));
  EXPECT_EQ(mesh.Coord(6)[Dim::kPp], 1);
  EXPECT_EQ(mesh.Coord(6)[Dim::kShard], 1);
  EXPECT_EQ(mesh.Coord(6)[Dim::kTp], 0);
}

TEST(MeshTest, GroupsAlongADimensionPartitionTheWorld) {
  MeshShape shape;
  shape.replicate = 2;
  shape.shard = 2;
  shape.cp = 2;
  Mesh mesh(shape);
  for (Dim d : {Dim::kReplicate, Dim::kShard, Dim::kCp}) {
    std::set<int> seen;
    std::set<std::string> names;
    for (int r = 0; r < shape.world(); ++r) {
      auto g = mesh.GroupOf(r, {d});
      EXPECT_EQ(g.size(), 2u);
      EXPECT_NE(std::find(g.begin(), g.end(), r), g.end());
      names.insert(mesh.GroupName(r, {d}));
      seen.insert(g.begin(), g.end());
    }
    EXPECT_EQ(seen.size(), static_cast<size_t>(shape.world()));
    EXPECT_EQ(names.size(), static_cast<size_t>(shape.world() / 2));  // one name per group
  }
}

TEST(StageLayersTest, BalancesParameterCountsAndHonoursOverrides) {
  auto c = LlamaConfig::FromFlavor("debugmodel");
  ASSERT_TRUE(c.ok());
  // Two stages of 6 layers: the embedding (first) and the head (last) weigh the same, so 3 + 3.
  EXPECT_THAT(StageLayers(*c, 2, {}),
              ElementsAre(std::pair<int64_t, int64_t>{0, 3}, std::pair<int64_t, int64_t>{3, 6}));
  // Contiguous, complete, non-empty for every stage count.
  for (int stages = 1; stages <= 6; ++stages) {
    auto split = StageLayers(*c, stages, {});
    ASSERT_EQ(split.size(), static_cast<size_t>(stages));
    EXPECT_EQ(split.front().first, 0);
    EXPECT_EQ(split.back().second, 6);
    for (size_t s = 0; s < split.size(); ++s) {
      EXPECT_LT(split[s].first, split[s].second);
      if (s > 0) {
        EXPECT_EQ(split[s].first, split[s - 1].second);
      }
    }
  }
  // A large vocabulary makes the end stages lighter in layers.
  LlamaConfig wide = *c;
  wide.vocab_size = 2048 * 16;
  auto split = StageLayers(wide, 3, {});
  EXPECT_LT(split[0].second - split[0].first, split[1].second - split[1].first);
  EXPECT_THAT(StageLayers(*c, 2, {1, 5}),
              ElementsAre(std::pair<int64_t, int64_t>{0, 1}, std::pair<int64_t, int64_t>{1, 6}));
}

}  // namespace
}  // namespace lora::dist
