#include "service/token_metrics.h"

#include <algorithm>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "hsm/token_supervisor.h"

namespace hsmrewrap::service {
namespace {

using Samples = std::vector<std::pair<Metrics::Labels, double>>;
using hsm::TokenSupervisor;

// The supervisors of the set (members that are not one, e.g. in tests, are left out).
std::vector<std::pair<std::string, TokenSupervisor*>> Supervisors(const hsm::TokenSet& set) {
  std::vector<std::pair<std::string, TokenSupervisor*>> out;
  for (size_t i = 0; i < set.size(); ++i) {
    if (set.member(i).supervisor) out.emplace_back(set.member(i).name, set.member(i).supervisor.get());
  }
  return out;
}

constexpr TokenSupervisor::State kStates[] = {TokenSupervisor::State::kUp,
                                               TokenSupervisor::State::kLost,
                                               TokenSupervisor::State::kPinRefused};

}  // namespace

void DeclareTokenMetrics(Metrics& m, std::shared_ptr<hsm::TokenSet> tokens) {
  const auto sups = Supervisors(*tokens);
  // Summed over the tokens.
  m.DeclareGauge("hsmrewrap_token_state",
                 "Tokens in each state as rewrapd sees them (with one token: 1 for its state)",
                 [sups] {
                   Samples out;
                   for (auto st : kStates) {
                     double n = 0;
                     for (const auto& [name, s] : sups) n += s->state() == st ? 1 : 0;
                     out.push_back({{{"state", TokenSupervisor::StateName(st)}}, n});
                   }
                   return out;
                 });
  auto sum = [sups](auto get) {
    double n = 0;
    for (const auto& [name, s] : sups) n += static_cast<double>(get(*s));
    return n;
  };
  m.DeclareGauge(
      "hsmrewrap_token_reconnects_total", "Successful re-initialisations after a token loss",
      [sum] { return Samples{{{}, sum([](TokenSupervisor& s) { return s.reconnects(); })}}; },
      "counter");
  m.DeclareGauge("hsmrewrap_token_last_outage_seconds",
                 "Duration of the last token outage (loss detected to serving again); 0 if none "
                 "(with several tokens: the longest of their last outages)",
                 [sups] {
                   double n = 0;
                   for (const auto& [name, s] : sups) n = std::max(n, s->last_outage_seconds());
                   return Samples{{{}, n}};
                 });
  m.DeclareGauge("hsmrewrap_token_stuck_calls",
                 "Token calls abandoned at a token loss (their items answered UNAVAILABLE) whose "
                 "thread is still inside the PKCS#11 module",
                 [sum] {
                   return Samples{{{}, sum([](TokenSupervisor& s) { return s.stuck_calls(); })}};
                 });
  m.DeclareGauge(
      "hsmrewrap_token_abandoned_calls_total",
      "Token calls given up on (lost token, or a health check that did not answer)",
      [sum] {
        return Samples{{{}, sum([](TokenSupervisor& s) { return s.abandoned_calls(); })}};
      },
      "counter");
  m.DeclareGauge(
      "hsmrewrap_pkcs11_calls_total", "PKCS#11 calls by function and result",
      [sups] {
        std::map<std::string, std::pair<double, double>> by_function;  // ok, error
        for (const auto& [name, s] : sups) {
          for (const auto& st : s->CallStats()) {
            auto& f = by_function[st.function];
            f.first += static_cast<double>(st.calls - st.errors);
            f.second += static_cast<double>(st.errors);
          }
        }
        Samples out;
        for (const auto& [function, n] : by_function) {
          if (n.first + n.second == 0) continue;
          out.push_back({{{"function", function}, {"result", "ok"}}, n.first});
          out.push_back({{{"function", function}, {"result", "error"}}, n.second});
        }
        return out;
      },
      "counter");
  m.DeclareGauge(
      "hsmrewrap_sessions",
      "PKCS#11 sessions: pool size, open (idle + in use), idle, discarded after errors", [sups] {
        double size = 0, open = 0, idle = 0, discarded = 0;
        for (const auto& [name, s] : sups) {
          const auto ps = s->pool_stats();
          size += static_cast<double>(ps.size);
          open += static_cast<double>(ps.open);
          idle += static_cast<double>(ps.idle);
          discarded += static_cast<double>(ps.discarded);
        }
        return Samples{{{{"state", "pool_size"}}, size},
                       {{{"state", "open"}}, open},
                       {{{"state", "idle"}}, idle},
                       {{{"state", "discarded_total"}}, discarded}};
      });

  // Per token of the set.
  m.DeclareGauge("hsmrewrap_tokenset_state", "Per token: 1 for its current state", [sups] {
    Samples out;
    for (const auto& [name, s] : sups) {
      for (auto st : kStates) {
        out.push_back({{{"token", name}, {"state", TokenSupervisor::StateName(st)}},
                       s->state() == st ? 1.0 : 0.0});
      }
    }
    return out;
  });
  auto per_token = [tokens](auto get) {
    Samples out;
    for (size_t i = 0; i < tokens->size(); ++i) {
      out.push_back({{{"token", tokens->member(i).name}}, static_cast<double>(get(i))});
    }
    return out;
  };
  m.DeclareGauge("hsmrewrap_tokenset_inflight_items", "Per token: items running on it now",
                 [tokens, per_token] {
                   return per_token([&](size_t i) { return tokens->stats(i).inflight.load(); });
                 });
  m.DeclareGauge(
      "hsmrewrap_tokenset_items_total", "Per token: items that ran on it to their result",
      [tokens, per_token] {
        return per_token([&](size_t i) { return tokens->stats(i).items.load(); });
      },
      "counter");
  m.DeclareGauge(
      "hsmrewrap_tokenset_failovers_total",
      "Per token: items that failed on it retryably (token lost, no session) and moved to "
      "another token",
      [tokens, per_token] {
        return per_token([&](size_t i) { return tokens->stats(i).failovers.load(); });
      },
      "counter");
  m.DeclareGauge(
      "hsmrewrap_tokenset_reconnects_total", "Per token: re-initialisations after a loss",
      [tokens, per_token] {
        return per_token([&](size_t i) {
          const auto& s = tokens->member(i).supervisor;
          return s ? s->reconnects() : 0;
        });
      },
      "counter");
  m.DeclareGauge("hsmrewrap_tokenset_last_outage_seconds",
                 "Per token: how long its last outage lasted (0 if none)", [tokens, per_token] {
                   return per_token([&](size_t i) {
                     const auto& s = tokens->member(i).supervisor;
                     return s ? s->last_outage_seconds() : 0.0;
                   });
                 });
}

}  // namespace hsmrewrap::service
