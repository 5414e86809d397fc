// Prometheus gauges of the tokens, read at scrape time: the long-standing families summed over
// the tokens of the set (with one token: that token), and hsmrewrap_tokenset_* per token name.
#pragma once

#include "hsm/token_set.h"
#include "service/metrics.h"

namespace hsmrewrap::service {

void DeclareTokenMetrics(Metrics& m, std::shared_ptr<hsm::TokenSet> tokens);

}  // namespace hsmrewrap::service
