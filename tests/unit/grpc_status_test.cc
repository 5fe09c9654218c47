// absl::Status <-> grpc::Status: code, message and typed google.rpc details survive the trip
// (what lorad sends and loractl, lora-worker and other gRPC clients read).
#include "common/grpc_status.h"

#include <gtest/gtest.h>

#include "common/job_spec/job_spec.h"
#include "common/not_leader.h"
#include "google/rpc/error_details.pb.h"
#include "google/rpc/status.pb.h"

namespace lora {
namespace {

TEST(GrpcStatusTest, ANotLeaderRefusalKeepsItsTypeAndLeaderAcrossTheWire) {
  const absl::Status refusal = NotLeaderError("a follower; writes go to lorad-0", "lorad-0:50051");
  const grpc::Status wire = ToGrpcStatus(refusal);
  EXPECT_EQ(wire.error_code(), grpc::StatusCode::UNAVAILABLE);
  // Any gRPC client can read it: google.rpc.Status with an ErrorInfo detail.
  google::rpc::Status details;
  ASSERT_TRUE(details.ParseFromString(wire.error_details()));
  ASSERT_EQ(details.details_size(), 1);
  EXPECT_EQ(details.details(0).type_url(), kErrorInfoTypeUrl);
  google::rpc::ErrorInfo info;
  ASSERT_TRUE(info.ParseFromString(details.details(0).value()));
  EXPECT_EQ(info.reason(), "NOT_LEADER");
  EXPECT_EQ(info.domain(), "lorad.io");
  const absl::Status back = FromGrpcStatus(wire);
  EXPECT_EQ(back.message(), refusal.message());
  EXPECT_EQ(NotLeader(back), std::optional<std::string>("lorad-0:50051"));
}

TEST(GrpcStatusTest, OnlyATypedRefusalCountsAsNotLeader) {
  EXPECT_EQ(NotLeader(absl::OkStatus()), std::nullopt);
  // The words alone are not the type: a lost connection may have done the call.
  EXPECT_EQ(NotLeader(absl::UnavailableError("follower NOT_LEADER")), std::nullopt);
  EXPECT_EQ(NotLeader(FromGrpcStatus(grpc::Status(grpc::StatusCode::UNAVAILABLE, "gone"))),
            std::nullopt);
  // Another code with the detail is not a refusal either.
  absl::Status other = absl::InternalError("x");
  other.SetPayload(kErrorInfoTypeUrl, *NotLeaderError("", "a:1").GetPayload(kErrorInfoTypeUrl));
  EXPECT_EQ(NotLeader(other), std::nullopt);
  EXPECT_EQ(NotLeader(NotLeaderError("being elected", "")), std::optional<std::string>(""));
}

TEST(GrpcStatusTest, FieldViolationsTravelAsABadRequest) {
  google::rpc::BadRequest bad;
  auto* v = bad.add_field_violations();
  v->set_field("training.steps");
  v->set_description("must be > 0");
  absl::Status status = absl::InvalidArgumentError("training.steps: must be > 0");
  status.SetPayload(kBadRequestTypeUrl, absl::Cord(bad.SerializeAsString()));
  const absl::Status back = FromGrpcStatus(ToGrpcStatus(status));
  EXPECT_EQ(back.code(), absl::StatusCode::kInvalidArgument);
  auto payload = back.GetPayload(kBadRequestTypeUrl);
  ASSERT_TRUE(payload.has_value());
  google::rpc::BadRequest read;
  ASSERT_TRUE(read.ParseFromString(std::string(*payload)));
  EXPECT_EQ(read.field_violations(0).field(), "training.steps");
}

}  // namespace
}  // namespace lora
