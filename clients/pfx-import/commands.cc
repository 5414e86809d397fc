// pfx-import list, remove and update, and the Graph sign-in they share with import.
#include "clients/pfx-import/commands.h"

#include <signal.h>
#include <unistd.h>

#include <fstream>
#include <iostream>
#include <set>
#include <thread>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "clients/pfx-import/parallel.h"
#include "clients/pfx-import/pfx_import.h"
#include "clients/pfx-import/rows.h"
#include "crypto/keys.h"

namespace hsmrewrap::pfx_import {

using crypto::SecretString;

namespace {

std::atomic<bool> g_stop{false};

void OnStop(int) {
  if (g_stop.exchange(true)) _exit(kExitInterrupted);  // a second Ctrl-C: now
}

int Usage(const std::string& command, const std::string& m) {
  std::cerr << "pfx-import " << command << ": " << m << " (see pfx-import " << command
            << " --help)\n";
  return kExitUsage;
}

// Flag problems are usage errors (2); a sign-in that fails is a start-up failure (3).
int SessionError(const std::string& command, const absl::Status& s) {
  if (s.code() == absl::StatusCode::kInvalidArgument) {
    return Usage(command, std::string(s.message()));
  }
  std::cerr << "pfx-import " << command << ": " << s.message() << "\n";
  return kExitStartup;
}

int DefaultJobs() {
  const unsigned n = std::thread::hardware_concurrency();
  return n == 0 ? 1 : static_cast<int>(n);
}

// Parses CLI11 flags; returns an exit code, or -1 to go on.
int Parse(CLI::App& app, int argc, char** argv) {
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    const int rc = app.exit(e);
    return rc == 0 ? 0 : kExitUsage;
  }
  return -1;
}

GraphClient::Options ClientOptions(const std::string& command) {
  GraphClient::Options o;
  o.stop = StopFlag();
  o.on_throttle = [command](absl::Duration d) {
    std::cerr << "pfx-import " << command << ": Graph is throttling (429); every worker waits "
              << absl::FormatDuration(d) << "\n";
  };
  return o;
}

}  // namespace

const std::atomic<bool>* StopFlag() { return &g_stop; }

void InstallStopHandler() {
  struct sigaction sa = {};
  sa.sa_handler = OnStop;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGINT, &sa, nullptr);
  sigaction(SIGTERM, &sa, nullptr);
}

void AddGraphFlags(CLI::App& app, GraphFlags& f, bool add_timeout) {
  app.add_option("--graph-url", f.graph_url,
                 "Graph base URL (default https://graph.microsoft.com/beta; GCC High/DoD: "
                 "https://graph.microsoft.us/beta)");
  app.add_option("--authority", f.authority,
                 "sign-in host (default https://login.microsoftonline.com; GCC High/DoD: "
                 "https://login.microsoftonline.us)");
  app.add_option("--tenant", f.tenant, "app sign-in: tenant id or domain");
  app.add_option("--client-id", f.client_id, "app sign-in: application (client) id");
  app.add_option("--client-secret-file", f.client_secret_file,
                 "app sign-in: file holding the client secret");
  app.add_option("--client-cert", f.client_cert,
                 "app sign-in: the app's certificate (PEM; may hold the key too)");
  app.add_option("--client-key", f.client_key, "app sign-in: its private key (PEM)");
  app.add_option("--token-file", f.token_file,
                 "file holding a Graph bearer token (else $GRAPH_TOKEN); read again on a 401");
  if (add_timeout) app.add_option("--timeout", f.timeout_s, "seconds per call (default 30)");
}

absl::StatusOr<GraphSession> OpenGraph(const GraphFlags& f, GraphClient::Options options) {
  GraphSession s;
  auto http = HttpClient::Create(absl::Seconds(f.timeout_s));
  if (!http.ok()) return http.status();
  s.http = std::move(*http);
  options.graph_url = f.graph_url.empty() ? kGlobalGraph : f.graph_url;
  const bool app = !f.tenant.empty() || !f.client_id.empty() || !f.client_secret_file.empty() ||
                   !f.client_cert.empty() || !f.client_key.empty();
  if (app && !f.token_file.empty()) {
    return absl::InvalidArgumentError("give app sign-in flags or --token-file, not both");
  }
  if (app) {
    AppCredentials c;
    c.authority = f.authority;
    c.tenant = f.tenant;
    c.client_id = f.client_id;
    c.scope = GraphScope(options.graph_url);
    if (!f.client_secret_file.empty() && !f.client_cert.empty()) {
      return absl::InvalidArgumentError("give --client-secret-file or --client-cert, not both");
    }
    if (!f.client_secret_file.empty()) {
      auto secret = crypto::ReadSecretFile(f.client_secret_file);
      if (!secret.ok()) return secret.status();
      c.client_secret = std::move(*secret);
    } else if (!f.client_cert.empty()) {
      auto cert = ReadWholeFile(f.client_cert, 1 << 20);
      if (!cert.ok()) return cert.status();
      c.client_cert_pem = std::move(*cert);
      auto key = crypto::ReadSecretFile(f.client_key.empty() ? f.client_cert : f.client_key);
      if (!key.ok()) return key.status();
      c.client_key_pem = std::move(*key);
    } else if (!f.client_key.empty()) {
      return absl::InvalidArgumentError("--client-key needs --client-cert");
    }
    auto tokens = AppTokenSource(std::move(c), s.http.get());
    if (!tokens.ok()) return tokens.status();
    s.tokens = std::move(*tokens);
  } else if (!f.token_file.empty()) {
    auto t = crypto::ReadSecretFile(f.token_file);
    if (!t.ok()) return t.status();
    s.tokens = StaticTokenFromFile(f.token_file, std::move(*t));
  } else if (const char* env = std::getenv("GRAPH_TOKEN"); env != nullptr && *env != 0) {
    s.tokens = StaticTokenFromEnv(SecretString(env));
  } else {
    return absl::InvalidArgumentError(
        "Graph needs a sign-in: --tenant and --client-id with --client-secret-file or "
        "--client-cert/--client-key, or a bearer token in --token-file or $GRAPH_TOKEN");
  }
  if (auto token = s.tokens->Get(); !token.ok()) return token.status();
  s.graph = std::make_unique<GraphClient>(std::move(options), s.http.get(), s.tokens.get());
  return s;
}

// ---------------------------------------------------------------------------------------
// list

namespace {

std::string Str(const nlohmann::json& j, const char* k) {
  return j.is_object() && j.contains(k) && j[k].is_string() ? j[k].get<std::string>() : "";
}

}  // namespace

int RunList(int argc, char** argv) {
  GraphFlags gf;
  std::vector<std::string> upns, thumbprints;
  bool json = false;
  CLI::App app{
      "pfx-import list: the userPFXCertificate records in Intune (Get-IntuneUserPfxCertificate).\n"
      "The UPN filter is case-insensitive, as the module's. Graph never returns\n"
      "encryptedPfxBlob/encryptedPfxPassword on GET: empty values are by design, not data loss.\n"
      "Exit codes: 0 found something for every --upn/--thumbprint asked; 1 some matched\n"
      "nothing; 2 usage; 3 Graph or sign-in failed.",
      "pfx-import list"};
  AddGraphFlags(app, gf, true);
  app.add_option("--upn", upns, "only these users (repeat or comma-separate)")->delimiter(',');
  app.add_option("--thumbprint", thumbprints, "only these certificates (SHA-1 hex)")
      ->delimiter(',');
  app.add_flag("--json", json, "JSON Lines, one record per line (input for remove)");
  if (int rc = Parse(app, argc, argv); rc >= 0) return rc;
  auto session = OpenGraph(gf, ClientOptions("list"));
  if (!session.ok()) return SessionError("list", session.status());
  GraphClient& graph = *session->graph;

  std::vector<std::string> filters;
  std::vector<std::string> asked;  // what each filter stands for, to say what matched nothing
  const std::vector<std::string> any = {""};
  for (const std::string& u : upns.empty() ? any : upns) {
    for (const std::string& t : thumbprints.empty() ? any : thumbprints) {
      filters.push_back(GraphClient::RecordFilter(u, t));
      asked.push_back(absl::StrCat(u.empty() ? "" : "user " + u, !u.empty() && !t.empty() ? ", " : "",
                                   t.empty() ? "" : "thumbprint " + t));
    }
  }
  std::vector<nlohmann::json> records;
  std::set<std::string> seen;
  int empty = 0;
  for (size_t i = 0; i < filters.size(); ++i) {
    auto r = graph.ListRecords(filters[i]);
    if (!r.ok()) {
      std::cerr << "pfx-import list: " << r.status().message() << "\n";
      return kExitStartup;
    }
    if (r->empty() && !filters[i].empty()) {
      std::cerr << "pfx-import list: no records for " << asked[i] << "\n";
      ++empty;
    }
    for (auto& rec : *r) {
      const std::string key = Str(rec, "id").empty() ? rec.dump() : Str(rec, "id");
      if (seen.insert(key).second) records.push_back(std::move(rec));
    }
  }
  if (json) {
    for (const auto& rec : records) std::cout << rec.dump() << "\n";
  } else {
    static constexpr absl::string_view kFormat = "%-32s %-40s %-15s %-12s %-10s %-25s\n";
    std::cout << absl::StrFormat(kFormat, "userPrincipalName", "thumbprint", "intendedPurpose",
                                 "keyName", "padding", "expirationDateTime");
    bool blobless = false;
    for (const auto& rec : records) {
      std::cout << absl::StrFormat(kFormat, Str(rec, "userPrincipalName"), Str(rec, "thumbprint"),
                                   Str(rec, "intendedPurpose"), Str(rec, "keyName"),
                                   Str(rec, "paddingScheme"), Str(rec, "expirationDateTime"));
      blobless = blobless || Str(rec, "encryptedPfxPassword").empty();
    }
    std::cerr << "pfx-import list: " << records.size() << " record(s) at " << graph.RecordsUrl()
              << "\n";
    if (blobless) {
      std::cerr << "  (Graph does not return encryptedPfxBlob/encryptedPfxPassword on GET: by "
                   "design, the records are intact)\n";
    }
  }
  std::cout.flush();
  return empty > 0 ? kExitRowsFailed : 0;
}

// ---------------------------------------------------------------------------------------
// remove and update: one record per line of a JSON Lines file, or one from the flags.

namespace {

struct Target {
  int line = 0;
  std::string upn, thumbprint;
  nlohmann::ordered_json record;
  std::string error;  // a line that cannot be used (or rewrap-connector's error line)
};

struct Done {
  enum Kind { kOk, kNotFound, kFailed } kind = kFailed;
  std::string text;
};

absl::StatusOr<std::vector<Target>> ReadTargets(const std::string& path) {
  std::ifstream file;
  std::istream* in = &std::cin;
  if (path != "-") {
    file.open(path);
    if (!file) return absl::NotFoundError(absl::StrCat("cannot read ", path));
    in = &file;
  }
  std::vector<Target> out;
  std::string text;
  for (int n = 1; std::getline(*in, text); ++n) {
    if (absl::StripAsciiWhitespace(text).empty()) continue;
    Target t;
    t.line = n;
    t.record = nlohmann::ordered_json::parse(text, nullptr, /*allow_exceptions=*/false);
    if (!t.record.is_object()) {
      t.error = "not a JSON object";
    } else if (t.record.contains("error") && t.record["error"].is_object()) {
      // rewrap-connector --reseal writes a line like this for a record it could not reseal.
      t.error = absl::StrCat("rewrap-connector could not reseal it: ",
                             Str(t.record["error"], "code"), ": ",
                             Str(t.record["error"], "message"));
    } else {
      t.upn = Str(t.record, "userPrincipalName");
      t.thumbprint = absl::AsciiStrToLower(Str(t.record, "thumbprint"));
      if (t.upn.empty() || t.thumbprint.empty()) t.error = "no userPrincipalName or thumbprint";
    }
    out.push_back(std::move(t));
  }
  return out;
}

std::string Where(const std::string& path, const Target& t) {
  return path.empty() ? absl::StrCat(t.upn, " ", t.thumbprint)
                      : absl::StrCat(path, " line ", t.line, " (", t.upn.empty() ? "?" : t.upn,
                                     " ", t.thumbprint.empty() ? "?" : t.thumbprint, ")");
}

// The record's key, {userIdWithoutHyphens}-{thumbprint}, resolving the UPN through Graph
// (the module's Remove wants the user id where its Get takes the UPN: INTEROP §4.3).
absl::StatusOr<std::string> RecordKey(GraphClient& graph, const Target& t) {
  auto uid = graph.UserId(t.upn);
  if (!uid.ok()) return uid.status();
  if (!uid->has_value()) {
    return absl::NotFoundError(absl::StrCat("no user with UPN ", t.upn, " in the tenant"));
  }
  return absl::StrCat(**uid, "-", t.thumbprint);
}

// Runs `work` over the targets with `jobs` workers; prints one line per record to stdout
// in input order and a summary; returns the exit code.
int RunTargets(const std::string& command, const std::string& path, std::vector<Target> targets,
               int jobs, const std::function<Done(const Target&)>& work) {
  size_t next = 0;
  int64_t ok = 0, not_found = 0, failed = 0;
  InstallStopHandler();
  const int64_t handled = RunInOrder<Target, Done>(
      jobs,
      [&](Target* t) {
        if (next == targets.size()) return false;
        *t = std::move(targets[next++]);
        return true;
      },
      [&](const Target& t) {
        if (!t.error.empty()) return Done{Done::kFailed, t.error};
        return work(t);
      },
      [&](Target& t, Done& d) {
        const char* label = d.kind == Done::kOk         ? (command == "remove" ? "deleted" : "updated")
                            : d.kind == Done::kNotFound ? "not-found"
                                                        : "failed";
        std::cout << absl::StrFormat("%-9s %s: %s\n", label, Where(path, t), d.text) << std::flush;
        (d.kind == Done::kOk ? ok : d.kind == Done::kNotFound ? not_found : failed)++;
      },
      StopFlag());
  std::cerr << absl::StrFormat("pfx-import %s: %d %s, %d not found, %d failed", command, ok,
                               command == "remove" ? "deleted" : "updated", not_found, failed);
  if (StopFlag()->load()) {
    std::cerr << absl::StrFormat("; interrupted, %d record(s) not tried\n",
                                 static_cast<int64_t>(targets.size()) - handled);
    return kExitInterrupted;
  }
  std::cerr << "\n";
  return ok == handled ? 0 : kExitRowsFailed;
}

}  // namespace

int RunRemove(int argc, char** argv) {
  GraphFlags gf;
  std::string upn, from;
  std::vector<std::string> thumbprints;
  bool yes = false;
  int jobs = DefaultJobs();
  CLI::App app{
      "pfx-import remove: delete userPFXCertificate records (Remove-IntuneUserPfxCertificate).\n"
      "Give --upn with --thumbprint, or --from a file written by `list --json` or\n"
      "`import --out`. The UPN is resolved to the user id Graph's record key needs; each record\n"
      "is reported as deleted (HTTP 204, and no longer listed) or not-found (HTTP 404).\n"
      "Exit codes: 0 all deleted; 1 some not found or failed; 2 usage; 130 interrupted.",
      "pfx-import remove"};
  AddGraphFlags(app, gf, true);
  app.add_option("--upn", upn, "the user's UPN");
  app.add_option("--thumbprint", thumbprints, "certificate thumbprint(s) (with --upn)")
      ->delimiter(',');
  app.add_option("--from", from, "JSON Lines records (list --json, import --out; - = stdin)");
  app.add_flag("--yes,-y", yes, "do not ask before deleting");
  app.add_option("--jobs,-j", jobs, "records deleted in parallel (default: cores)")
      ->check(CLI::Range(1, 64));
  if (int rc = Parse(app, argc, argv); rc >= 0) return rc;
  std::vector<Target> targets;
  if (!from.empty()) {
    if (!upn.empty() || !thumbprints.empty()) return Usage("remove", "--from excludes --upn");
    auto t = ReadTargets(from);
    if (!t.ok()) return Usage("remove", std::string(t.status().message()));
    targets = std::move(*t);
  } else {
    if (upn.empty() || thumbprints.empty()) {
      return Usage("remove", "give --upn and --thumbprint, or --from FILE");
    }
    for (const auto& tp : thumbprints) {
      Target t;
      t.upn = upn;
      t.thumbprint = absl::AsciiStrToLower(tp);
      targets.push_back(std::move(t));
    }
    from.clear();
  }
  auto session = OpenGraph(gf, ClientOptions("remove"));
  if (!session.ok()) return SessionError("remove", session.status());
  GraphClient& graph = *session->graph;
  if (!yes) {
    for (const auto& t : targets) {
      if (t.error.empty()) std::cerr << "  " << t.upn << "  " << t.thumbprint << "\n";
    }
    auto answer = AskYesNo(absl::StrCat("Delete these ", targets.size(),
                                        " userPFXCertificate record(s) from ", graph.base(), "?"));
    if (!answer) return Usage("remove", "no terminal to confirm on: add --yes");
    if (!*answer) {
      std::cerr << "pfx-import remove: nothing deleted\n";
      return kExitRowsFailed;
    }
  }
  return RunTargets("remove", from, std::move(targets), jobs, [&](const Target& t) {
    auto key = RecordKey(graph, t);
    if (!key.ok()) return Done{Done::kFailed, std::string(key.status().message())};
    GraphResult r = graph.Call("DELETE", "/deviceManagement/userPfxCertificates/" + *key);
    if (r.status == 404) return Done{Done::kNotFound, "HTTP 404: no such record, nothing deleted"};
    if (!r.ok()) return Done{Done::kFailed, r.error};
    // The module's users saw 204 with the record still there (INTEROP §8 #2): look.
    auto left = graph.ListRecords(GraphClient::RecordFilter(t.upn, t.thumbprint));
    if (left.ok() && !left->empty()) {
      return Done{Done::kFailed, absl::StrCat("HTTP ", r.status, " but Graph still lists ",
                                              *key, " (the key did not match the record)")};
    }
    return Done{Done::kOk, absl::StrCat("HTTP ", r.status, ", ", *key)};
  });
}

int RunUpdate(int argc, char** argv) {
  GraphFlags gf;
  std::string in;
  int jobs = DefaultJobs();
  CLI::App app{
      "pfx-import update: replace records in Intune (Import-IntuneUserPfxCertificate -IsUpdate),\n"
      "e.g. after a key rotation: `rewrap-connector --reseal --to NEWKEY` output goes in.\n"
      "Each record is PATCHed to userPfxCertificates('{userId}-{thumbprint}') with\n"
      "lastModifiedDateTime set to now; error lines of rewrap-connector are reported as failed.\n"
      "Exit codes: 0 all updated; 1 some not found or failed; 2 usage; 130 interrupted.",
      "pfx-import update"};
  AddGraphFlags(app, gf, true);
  app.add_option("--in", in, "JSON Lines records (rewrap-connector --reseal --out; - = stdin)")
      ->required();
  app.add_option("--jobs,-j", jobs, "records updated in parallel (default: cores)")
      ->check(CLI::Range(1, 64));
  if (int rc = Parse(app, argc, argv); rc >= 0) return rc;
  auto targets = ReadTargets(in);
  if (!targets.ok()) return Usage("update", std::string(targets.status().message()));
  auto session = OpenGraph(gf, ClientOptions("update"));
  if (!session.ok()) return SessionError("update", session.status());
  GraphClient& graph = *session->graph;
  return RunTargets("update", in, std::move(*targets), jobs, [&](const Target& t) {
    if (Str(t.record, "encryptedPfxPassword").empty() || Str(t.record, "encryptedPfxBlob").empty()) {
      return Done{Done::kFailed,
                  "no encryptedPfxBlob/encryptedPfxPassword (a `list` record? update takes "
                  "import --out or rewrap-connector --reseal output)"};
    }
    auto key = RecordKey(graph, t);
    if (!key.ok()) return Done{Done::kFailed, std::string(key.status().message())};
    nlohmann::ordered_json body;
    for (const auto& [k, v] : t.record.items()) {
      if (k != "id" && k.rfind("@odata", 0) != 0) body[k] = v;
    }
    body["lastModifiedDateTime"] =
        FormatDateTimeOffset(absl::Now(), absl::LocalTimeZone(), /*fractional=*/true);
    GraphResult r = graph.Call(
        "PATCH", absl::StrCat("/deviceManagement/userPfxCertificates('", *key, "')"), body.dump());
    if (r.status == 404) {
      return Done{Done::kNotFound, "HTTP 404: no such record in Intune (import it first)"};
    }
    if (!r.ok()) return Done{Done::kFailed, r.error};
    return Done{Done::kOk, absl::StrCat("HTTP ", r.status, ", keyName ", Str(t.record, "keyName"))};
  });
}

}  // namespace hsmrewrap::pfx_import
