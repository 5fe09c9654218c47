// FirstSpecDifference: which field two specs differ in, by the key path people write.
#include <google/protobuf/descriptor.h>
#include <google/protobuf/io/coded_stream.h>
#include <google/protobuf/io/zero_copy_stream_impl_lite.h>
#include <google/protobuf/message.h>

#include <memory>

#include "absl/strings/str_cat.h"
#include "common/job_spec/job_spec.h"

namespace lora {
namespace {

using google::protobuf::FieldDescriptor;
using google::protobuf::Message;

std::string Only(const Message& m, const FieldDescriptor* keep) {
  std::unique_ptr<Message> copy(m.New());
  copy->CopyFrom(m);
  const auto* descriptor = m.GetDescriptor();
  for (int j = 0; j < descriptor->field_count(); ++j) {
    if (descriptor->field(j) != keep)
      copy->GetReflection()->ClearField(copy.get(), descriptor->field(j));
  }
  std::string out;
  google::protobuf::io::StringOutputStream stream(&out);
  google::protobuf::io::CodedOutputStream coded(&stream);
  coded.SetSerializationDeterministic(true);
  copy->SerializePartialToCodedStream(&coded);
  coded.Trim();
  return out;
}

std::string Diff(const Message& a, const Message& b, const std::string& prefix) {
  const auto* descriptor = a.GetDescriptor();
  const auto* ra = a.GetReflection();
  const auto* rb = b.GetReflection();
  for (int i = 0; i < descriptor->field_count(); ++i) {
    const FieldDescriptor* f = descriptor->field(i);
    const std::string path = prefix.empty() ? f->name() : absl::StrCat(prefix, ".", f->name());
    if (!f->is_repeated() && f->cpp_type() == FieldDescriptor::CPPTYPE_MESSAGE) {
      const bool has_a = ra->HasField(a, f), has_b = rb->HasField(b, f);
      if (!has_a && !has_b) continue;
      std::string inner = Diff(ra->GetMessage(a, f), rb->GetMessage(b, f), path);
      if (!inner.empty()) return inner;
      continue;
    }
    // Scalars, repeated fields and maps: compared whole, as a message holding only them
    // (serialized deterministically, since map order on the wire is unspecified).
    if (Only(a, f) != Only(b, f)) return path;
  }
  return "";
}

}  // namespace

std::string FirstSpecDifference(const lora::v1::JobSpec& a, const lora::v1::JobSpec& b) {
  return Diff(a, b, "");
}

}  // namespace lora
