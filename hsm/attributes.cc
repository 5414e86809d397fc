#include "hsm/attributes.h"

#include <cstring>

namespace hsmrewrap::hsm {

Template& Template::Bool(CK_ATTRIBUTE_TYPE t, bool v) {
  return Own(t, std::vector<uint8_t>{static_cast<uint8_t>(v ? CK_TRUE : CK_FALSE)});
}

Template& Template::Ulong(CK_ATTRIBUTE_TYPE t, CK_ULONG v) {
  std::vector<uint8_t> b(sizeof(v));
  std::memcpy(b.data(), &v, sizeof(v));
  return Own(t, std::move(b));
}

Template& Template::Data(CK_ATTRIBUTE_TYPE t, absl::Span<const uint8_t> v) {
  return Own(t, std::vector<uint8_t>(v.begin(), v.end()));
}

Template& Template::Str(CK_ATTRIBUTE_TYPE t, const std::string& s) {
  return Own(t, std::vector<uint8_t>(s.begin(), s.end()));
}

Template& Template::Mechanisms(const std::vector<CK_MECHANISM_TYPE>& m) {
  std::vector<uint8_t> b(m.size() * sizeof(CK_MECHANISM_TYPE));
  if (!b.empty()) std::memcpy(b.data(), m.data(), b.size());
  return Own(CKA_ALLOWED_MECHANISMS, std::move(b));
}

Template& Template::SecretRef(CK_ATTRIBUTE_TYPE t, const crypto::SecretBytes& v) {
  attrs_.push_back(CK_ATTRIBUTE{t, const_cast<uint8_t*>(v.data()), CK_ULONG(v.size())});
  return *this;
}

void Template::Remove(CK_ATTRIBUTE_TYPE t) {
  attrs_.erase(std::remove_if(attrs_.begin(), attrs_.end(),
                              [t](const CK_ATTRIBUTE& a) { return a.type == t; }),
               attrs_.end());
}

bool Template::Has(CK_ATTRIBUTE_TYPE t) const {
  return std::any_of(attrs_.begin(), attrs_.end(),
                     [t](const CK_ATTRIBUTE& a) { return a.type == t; });
}

Template& Template::Own(CK_ATTRIBUTE_TYPE t, std::vector<uint8_t> b) {
  store_.push_back(std::move(b));
  auto& s = store_.back();
  attrs_.push_back(CK_ATTRIBUTE{t, s.empty() ? nullptr : s.data(), CK_ULONG(s.size())});
  return *this;
}

}  // namespace hsmrewrap::hsm
