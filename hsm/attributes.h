// PKCS#11 attribute templates.
#pragma once

#include <algorithm>
#include <cstdint>
#include <deque>
#include <string>
#include <vector>

#include "absl/types/span.h"
#include "crypto/secret.h"
#include "hsm/pkcs11.h"

namespace hsmrewrap::hsm {

// An attribute template that owns the storage of its non-secret values. Secret values are
// referenced, not copied: the caller's SecretBytes must outlive the template.
//
// Move-only: the CK_ATTRIBUTEs point into the template's own storage, so a copy would point
// into the original's. A move keeps the storage (and so every pointer) as it is.
class Template final {
 public:
  Template() = default;
  Template(Template&&) = default;
  Template& operator=(Template&&) = default;
  Template(const Template&) = delete;
  Template& operator=(const Template&) = delete;

  Template& Bool(CK_ATTRIBUTE_TYPE t, bool v);
  Template& Ulong(CK_ATTRIBUTE_TYPE t, CK_ULONG v);
  Template& Data(CK_ATTRIBUTE_TYPE t, absl::Span<const uint8_t> v);
  Template& Str(CK_ATTRIBUTE_TYPE t, const std::string& s);
  Template& Mechanisms(const std::vector<CK_MECHANISM_TYPE>& m);  // CKA_ALLOWED_MECHANISMS
  Template& SecretRef(CK_ATTRIBUTE_TYPE t, const crypto::SecretBytes& v);
  void Remove(CK_ATTRIBUTE_TYPE t);
  bool Has(CK_ATTRIBUTE_TYPE t) const;

  CK_ATTRIBUTE* data() { return attrs_.data(); }
  CK_ULONG size() const { return attrs_.size(); }

 private:
  Template& Own(CK_ATTRIBUTE_TYPE t, std::vector<uint8_t> b);
  std::vector<CK_ATTRIBUTE> attrs_;
  std::deque<std::vector<uint8_t>> store_;  // a deque: element addresses stay stable
};

}  // namespace hsmrewrap::hsm
