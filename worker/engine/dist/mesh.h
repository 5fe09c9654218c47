// The device mesh of a job: world = pp x replicate x shard x cp x tp ranks, laid out with tp
// innermost (neighbouring ranks share a tensor-parallel group, as torchtitan does).
//
//   Mesh m({.pp = 2, .replicate = 1, .shard = 2, .cp = 1, .tp = 1});
//   MeshCoord c = m.Coord(rank);        // this rank's position
//   std::vector<int> g = m.GroupOf(rank, {Dim::kShard});   // ranks of its FSDP group
#ifndef LORA_WORKER_ENGINE_DIST_MESH_H_
#define LORA_WORKER_ENGINE_DIST_MESH_H_

#include <array>
#include <string>
#include <vector>

namespace lora::dist {

enum class Dim { kPp = 0, kReplicate = 1, kShard = 2, kCp = 3, kTp = 4 };
inline constexpr int kDims = 5;

struct MeshShape {
  int pp = 1, replicate = 1, shard = 1, cp = 1, tp = 1;
  int size(Dim d) const;
  int world() const { return pp * replicate * shard * cp * tp; }
  std::string ToString() const;
};

struct MeshCoord {
  std::array<int, kDims> c{};
  int operator[](Dim d) const { return c[static_cast<int>(d)]; }
};

class Mesh {
 public:
  explicit Mesh(MeshShape shape) : shape_(shape) {}
  const MeshShape& shape() const { return shape_; }
  MeshCoord Coord(int rank) const;
  int Rank(const MeshCoord& coord) const;
  // Ranks that differ from `rank` only along `dims`, ordered by those coordinates.
  std::vector<int> GroupOf(int rank, const std::vector<Dim>& dims) const;
  // A name unique to the group of `rank` along `dims` (for store prefixes).
  std::string GroupName(int rank, const std::vector<Dim>& dims) const;

 private:
  MeshShape shape_;
};

}  // namespace lora::dist

#endif  // LORA_WORKER_ENGINE_DIST_MESH_H_
