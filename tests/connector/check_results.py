#!/usr/bin/env python3
"""Checks a rewrap-connector run made from gen_requests.py output: every request id is
answered exactly once, no unknown ids, every result succeeded (unless --allow-failed),
and a random sample of outputs decrypts with OpenSSL (the device's private key) to the
password that was sealed."""
import argparse, base64, json, os, random, subprocess, sys, tempfile

ap = argparse.ArgumentParser()
ap.add_argument("--requests", required=True)
ap.add_argument("--results", required=True)
ap.add_argument("--secrets", required=True)
ap.add_argument("--keys", required=True, help="cert=key,... in the order given to gen_requests --certs")
ap.add_argument("--sample", type=int, default=1000)
ap.add_argument("--seed", type=int, default=None)
ap.add_argument("--invalid", default=None,
                help="file of ids (one a line) sealed wrongly on purpose: they must fail DECRYPT_FAILED")
ap.add_argument("--summary-json", default=None, help="write the counts here (scripts/soak.sh)")
a = ap.parse_args()

pws = [bytes.fromhex(h) for h in json.load(open(a.secrets))]
devs = [tuple(p.split("=")) for p in a.keys.split(",")]
want = {}  # id -> (pw index, dev index, format)
order = []
for line in open(a.requests):
    r = json.loads(line)
    want[r["id"]] = (r["_pw"], r["_dev"], r.get("format", "cms"))
    order.append(r["id"])
rng = random.Random(a.seed)
invalid = set(l.strip() for l in open(a.invalid)) if a.invalid else set()
valid = [i for i in order if i not in invalid]
sample = set(rng.sample(valid, min(a.sample, len(valid))))

seen, outputs, failed, unknown, dup = {}, {}, [], [], []
paths = {}
for line in open(a.results):
    r = json.loads(line)
    i = r.get("id")
    if i not in want:
        unknown.append(i)
        continue
    if i in seen:
        dup.append(i)
    seen[i] = True
    if i in invalid:
        if "output" in r or r.get("error", {}).get("code") != "DECRYPT_FAILED":
            failed.append(r)  # a bad seal must fail, and only as DECRYPT_FAILED
    elif "output" not in r:
        failed.append(r)
    elif i in sample:
        outputs[i] = base64.b64decode(r["output"])
    paths[r.get("path")] = paths.get(r.get("path"), 0) + 1
missing = [i for i in order if i not in seen]
print("check: %d requests, %d answered, %d missing, %d answered twice, %d unknown ids, %d failed; paths %s"
      % (len(order), len(seen), len(missing), len(dup), len(unknown), len(failed), paths))
for r in failed[:5]:
    print("check: failed:", json.dumps(r)[:300])
ok = not missing and not dup and not unknown and not failed

bad = 0
with tempfile.TemporaryDirectory() as d:
    der = os.path.join(d, "o.der")
    for i in sorted(outputs):
        pw_i, dev_i, fmt = want[i]
        crt, key = devs[dev_i]
        open(der, "wb").write(outputs[i])
        if fmt.lower().startswith("rsaoaep"):
            md = "sha" + fmt.lower().split("sha")[1]
            cmd = ["openssl", "pkeyutl", "-decrypt", "-inkey", key, "-in", der, "-pkeyopt",
                   "rsa_padding_mode:oaep", "-pkeyopt", "rsa_oaep_md:" + md, "-pkeyopt", "rsa_mgf1_md:" + md]
        else:
            cmd = ["openssl", "cms", "-decrypt", "-inform", "DER", "-in", der, "-inkey", key, "-recip", crt]
        p = subprocess.run(cmd, capture_output=True)
        if p.returncode != 0 or p.stdout != pws[pw_i]:
            bad += 1
            if bad <= 5:
                print("check: %s (%s) does not decrypt to its password: %s" % (i, fmt, p.stderr[:200]))
print("check: sample of %d outputs decrypted with OpenSSL: %d correct, %d wrong"
      % (len(outputs), len(outputs) - bad, bad))
if a.summary_json:
    json.dump({"requests": len(order), "answered": len(seen), "missing": len(missing), "duplicated": len(dup),
               "unknown": len(unknown), "failed": len(failed), "invalid": len(invalid), "sampled": len(outputs),
               "wrong": bad, "failed_codes": sorted({(f.get("error") or {}).get("code", "OUTPUT") for f in failed})},
              open(a.summary_json, "w"))
sys.exit(0 if ok and bad == 0 else 1)
