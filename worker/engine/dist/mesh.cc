#include "worker/engine/dist/mesh.h"

#include <algorithm>

#include "absl/strings/str_cat.h"

namespace lora::dist {

int MeshShape::size(Dim d) const {
  switch (d) {
    case Dim::kPp:
      return pp;
    case Dim::kReplicate:
      return replicate;
    case Dim::kShard:
      return shard;
    case Dim::kCp:
      return cp;
    case Dim::kTp:
      return tp;
  }
  return 1;
}

std::string MeshShape::ToString() const {
  return absl::StrCat("pp", pp, " x replicate", replicate, " x shard", shard, " x cp", cp, " x tp",
                      tp);
}

MeshCoord Mesh::Coord(int rank) const {
  MeshCoord out;
  for (int d = kDims - 1; d >= 0; --d) {
    const int n = shape_.size(static_cast<Dim>(d));
    out.c[static_cast<size_t>(d)] = rank % n;
    rank /= n;
  }
  return out;
}

int Mesh::Rank(const MeshCoord& coord) const {
  int rank = 0;
  for (int d = 0; d < kDims; ++d)
    rank = rank * shape_.size(static_cast<Dim>(d)) + coord.c[static_cast<size_t>(d)];
  return rank;
}

std::vector<int> Mesh::GroupOf(int rank, const std::vector<Dim>& dims) const {
  const MeshCoord base = Coord(rank);
  std::vector<int> out = {rank};
  // Enumerate all combinations of the varying dims (in mesh order), keeping the rest fixed.
  std::vector<Dim> sorted = dims;
  std::sort(sorted.begin(), sorted.end());
  std::vector<MeshCoord> coords = {base};
  for (Dim d : sorted) {
    std::vector<MeshCoord> next;
    for (const MeshCoord& c : coords) {
      for (int i = 0; i < shape_.size(d); ++i) {
        MeshCoord x = c;
        x.c[static_cast<size_t>(d)] = i;
        next.push_back(x);
      }
    }
    coords = std::move(next);
  }
  out.clear();
  for (const MeshCoord& c : coords) out.push_back(Rank(c));
  return out;
}

std::string Mesh::GroupName(int rank, const std::vector<Dim>& dims) const {
  static const char* kNames[] = {"pp", "rep", "shard", "cp", "tp"};
  const MeshCoord c = Coord(rank);
  std::string name = "g";
  for (int d = 0; d < kDims; ++d) {
    const bool varies = std::find(dims.begin(), dims.end(), static_cast<Dim>(d)) != dims.end();
    absl::StrAppend(&name, "/", kNames[d],
                    varies ? std::string("*") : std::to_string(c.c[static_cast<size_t>(d)]));
  }
  return name;
}

}  // namespace lora::dist
