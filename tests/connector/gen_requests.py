#!/usr/bin/env python3
"""Writes a rewrap-connector request file quickly: a few random passwords are sealed to
the service key once (openssl pkeyutl) and their ciphertexts reused across lines; a few
device certificates are reused too. Each line carries "_pw" (index into --secrets) and
"_dev" (index into --certs) for check_results.py; the connector ignores unknown fields."""
import argparse, base64, json, os, secrets, subprocess

ap = argparse.ArgumentParser()
ap.add_argument("--pub", required=True, help="service public key (PEM)")
ap.add_argument("--key-name", default="default")
ap.add_argument("--certs", required=True, help="comma-separated device certificates (PEM)")
ap.add_argument("--passwords", type=int, default=4)
ap.add_argument("--lines", type=int, required=True)
ap.add_argument("--out", required=True)
ap.add_argument("--secrets", required=True, help="JSON file written with the passwords (hex)")
a = ap.parse_args()

PADS = {"oaepSha512": "sha512", "oaepSha256": "sha256"}
sealed = []  # (password, paddingScheme, ciphertext b64)
for i in range(a.passwords):
    pw = ("Pw-%d-" % i + secrets.token_urlsafe(12)).encode()
    scheme = list(PADS)[i % len(PADS)]
    md = PADS[scheme]
    ct = subprocess.run(["openssl", "pkeyutl", "-encrypt", "-pubin", "-inkey", a.pub,
                         "-pkeyopt", "rsa_padding_mode:oaep", "-pkeyopt", "rsa_oaep_md:" + md,
                         "-pkeyopt", "rsa_mgf1_md:" + md], input=pw, check=True,
                        capture_output=True).stdout
    sealed.append((pw, scheme, base64.b64encode(ct).decode()))

devs = []
for path in a.certs.split(","):
    der = subprocess.run(["openssl", "x509", "-in", path, "-outform", "DER"], check=True,
                         capture_output=True).stdout
    txt = subprocess.run(["openssl", "x509", "-in", path, "-noout", "-text"], check=True,
                         capture_output=True, text=True).stdout
    devs.append((base64.b64encode(der).decode(), "rsaEncryption" in txt))

RSA_FORMATS = [("cms", "aes256"), ("cms", "aes128"), ("cmsPkcs1", "aes256"), ("rsaOaepSha256", None),
               ("cms", "3des")]
with open(a.out, "w") as f:
    for n in range(a.lines):
        pw_i = n % len(sealed)
        dev_i = (n // len(sealed)) % len(devs)
        der, is_rsa = devs[dev_i]
        fmt, cipher = RSA_FORMATS[n % len(RSA_FORMATS)] if is_rsa else ("cms", "aes256")
        r = {"id": "req-%07d" % n, "keyName": a.key_name, "paddingScheme": sealed[pw_i][1],
             "encryptedPfxPassword": sealed[pw_i][2], "deviceCertificate": der, "format": fmt,
             "_pw": pw_i, "_dev": dev_i}
        if cipher:
            r["contentCipher"] = cipher
        f.write(json.dumps(r, separators=(",", ":")) + "\n")
with open(a.secrets, "w") as f:
    json.dump([s[0].hex() for s in sealed], f)
os.chmod(a.secrets, 0o600)
# The leak check (tests/leakcheck/leakcheck.sh) searches the service's logs for them.
if os.environ.get("HSMREWRAP_LEAKCHECK_DIR") and os.environ.get("HSMREWRAP_LEAKCHECK_TEST"):
    d = os.path.join(os.environ["HSMREWRAP_LEAKCHECK_DIR"], os.environ["HSMREWRAP_LEAKCHECK_TEST"])
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "secrets-%d.hex" % os.getpid()), "a") as f:
        f.write("".join(s[0].hex() + "\n" for s in sealed))
