#include "service/token_metrics.h"

#include <string>
#include <utility>
#include <vector>

namespace hsmrewrap::service {

void DeclareTokenMetrics(Metrics& m, hsm::TokenSupervisor* s) {
  using Samples = std::vector<std::pair<Metrics::Labels, double>>;
  m.DeclareGauge(
      "hsmrewrap_token_state", "Token state as rewrapd sees it: 1 for the current state", [s] {
        Samples out;
        const auto now = s->state();
        for (auto st : {hsm::TokenSupervisor::State::kUp, hsm::TokenSupervisor::State::kLost,
                        hsm::TokenSupervisor::State::kPinRefused}) {
          out.push_back({{{"state", hsm::TokenSupervisor::StateName(st)}}, st == now ? 1.0 : 0.0});
        }
        return out;
      });
  m.DeclareGauge(
      "hsmrewrap_token_reconnects_total", "Successful re-initialisations after a token loss",
      [s] {
        return Samples{{{}, static_cast<double>(s->reconnects())}};
      },
      "counter");
  m.DeclareGauge("hsmrewrap_token_last_outage_seconds",
                 "Duration of the last token outage (loss detected to serving again); 0 if none",
                 [s] {
                   return Samples{{{}, s->last_outage_seconds()}};
                 });
  m.DeclareGauge("hsmrewrap_token_stuck_calls",
                 "Token calls abandoned at a token loss (their items answered UNAVAILABLE) whose "
                 "thread is still "
                 "inside the PKCS#11 module",
                 [s] {
                   return Samples{{{}, static_cast<double>(s->stuck_calls())}};
                 });
  m.DeclareGauge(
      "hsmrewrap_token_abandoned_calls_total",
      "Token calls given up on (lost token, or a health check that did not answer)",
      [s] {
        return Samples{{{}, static_cast<double>(s->abandoned_calls())}};
      },
      "counter");
  m.DeclareGauge(
      "hsmrewrap_pkcs11_calls_total", "PKCS#11 calls by function and result",
      [s] {
        Samples out;
        for (const auto& st : s->CallStats()) {
          if (st.calls == 0) continue;
          out.push_back({{{"function", st.function}, {"result", "ok"}},
                         static_cast<double>(st.calls - st.errors)});
          out.push_back(
              {{{"function", st.function}, {"result", "error"}}, static_cast<double>(st.errors)});
        }
        return out;
      },
      "counter");
  m.DeclareGauge(
      "hsmrewrap_sessions",
      "PKCS#11 sessions: pool size, open (idle + in use), idle, discarded after errors", [s] {
        const auto ps = s->pool_stats();
        return Samples{{{{"state", "pool_size"}}, static_cast<double>(ps.size)},
                       {{{"state", "open"}}, static_cast<double>(ps.open)},
                       {{{"state", "idle"}}, static_cast<double>(ps.idle)},
                       {{{"state", "discarded_total"}}, static_cast<double>(ps.discarded)}};
      });
}

}  // namespace hsmrewrap::service
