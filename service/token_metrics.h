// Metrics about the token as the supervisor sees it: state, reconnects, last outage,
// PKCS#11 calls (summed over module re-initialisations) and sessions.
#pragma once

#include "hsm/token_supervisor.h"
#include "service/metrics.h"

namespace hsmrewrap::service {

// Declares hsmrewrap_token_state, hsmrewrap_token_reconnects_total,
// hsmrewrap_token_last_outage_seconds, hsmrewrap_pkcs11_calls_total and hsmrewrap_sessions,
// read from `supervisor` at scrape time (it must outlive `m`'s scrapes).
void DeclareTokenMetrics(Metrics& m, hsm::TokenSupervisor* supervisor);

}  // namespace hsmrewrap::service
