// A second, independent CMS consumer for the tests: BouncyCastle (Debian's libbcpkix-java),
// beside `openssl cms`. Decrypts CMS EnvelopedData the way a Java device or server would.
//
//   java -cp DIR:/usr/share/java/bcprov.jar:/usr/share/java/bcpkix.jar:/usr/share/java/bcutil.jar \
//       BcCmsDecrypt LIST
//
// LIST has one job per line: "CMS_DER KEY_PKCS8_DER CERT_DER cert|keyid OUT". The key is RSA
// (key transport) or EC (key agreement). "cert" looks the recipient up by the certificate
// (issuer and serial, or its subjectKeyIdentifier); "keyid" by the SHA-1 of the certificate's public key bits (RFC 5280
// method 1), as a device holding only its key would. The plaintext goes to OUT; a job that
// fails writes "ERROR <reason>" to OUT.err. Exit 0 when every job decrypted.
import java.io.ByteArrayInputStream;
import java.nio.file.Files;
import java.nio.file.Paths;
import java.security.KeyFactory;
import java.security.MessageDigest;
import java.security.PrivateKey;
import java.security.Security;
import java.security.cert.CertificateFactory;
import java.security.cert.X509Certificate;
import java.security.spec.PKCS8EncodedKeySpec;
import java.util.List;
import org.bouncycastle.asn1.x509.SubjectPublicKeyInfo;
import org.bouncycastle.cms.CMSEnvelopedData;
import org.bouncycastle.cms.KeyAgreeRecipientId;
import org.bouncycastle.cms.KeyTransRecipientId;
import org.bouncycastle.cms.Recipient;
import org.bouncycastle.cms.RecipientId;
import org.bouncycastle.cms.RecipientInformation;
import org.bouncycastle.cms.jcajce.JceKeyAgreeEnvelopedRecipient;
import org.bouncycastle.cms.jcajce.JceKeyAgreeRecipientId;
import org.bouncycastle.cms.jcajce.JceKeyTransEnvelopedRecipient;
import org.bouncycastle.cms.jcajce.JceKeyTransRecipientId;
import org.bouncycastle.jce.provider.BouncyCastleProvider;

public final class BcCmsDecrypt {
  public static void main(String[] args) throws Exception {
    Security.addProvider(new BouncyCastleProvider());
    List<String> jobs = Files.readAllLines(Paths.get(args[0]));
    int failed = 0;
    for (String line : jobs) {
      if (line.isBlank()) continue;
      String[] f = line.trim().split(" ");
      try {
        Files.write(Paths.get(f[4]), decrypt(f[0], f[1], f[2], f[3].equals("keyid")));
      } catch (Exception e) {
        failed++;
        Files.write(Paths.get(f[4] + ".err"), ("ERROR " + e).getBytes("UTF-8"));
      }
    }
    System.exit(failed == 0 ? 0 : 1);
  }

  static byte[] decrypt(String cmsPath, String keyPath, String certPath, boolean byKeyId)
      throws Exception {
    CMSEnvelopedData env = new CMSEnvelopedData(Files.readAllBytes(Paths.get(cmsPath)));
    X509Certificate cert = (X509Certificate) CertificateFactory.getInstance("X.509")
        .generateCertificate(new ByteArrayInputStream(Files.readAllBytes(Paths.get(certPath))));
    boolean ec = cert.getPublicKey().getAlgorithm().equals("EC");
    PKCS8EncodedKeySpec spec = new PKCS8EncodedKeySpec(Files.readAllBytes(Paths.get(keyPath)));
    PrivateKey key = KeyFactory.getInstance(ec ? "EC" : "RSA", "BC").generatePrivate(spec);
    byte[] keyId = MessageDigest.getInstance("SHA-1").digest(
        SubjectPublicKeyInfo.getInstance(cert.getPublicKey().getEncoded()).getPublicKeyData().getBytes());
    RecipientId rid;
    Recipient recipient;
    if (ec) {
      rid = byKeyId ? new KeyAgreeRecipientId(keyId) : new JceKeyAgreeRecipientId(cert);
      recipient = new JceKeyAgreeEnvelopedRecipient(key).setProvider("BC");
    } else {
      rid = byKeyId ? new KeyTransRecipientId(keyId) : new JceKeyTransRecipientId(cert);
      recipient = new JceKeyTransEnvelopedRecipient(key).setProvider("BC");
    }
    RecipientInformation ri = env.getRecipientInfos().get(rid);
    // BouncyCastle's key-agreement id from a certificate holds issuer and serial only; a
    // device with a certificate also knows the certificate's subjectKeyIdentifier.
    byte[] certSki = cert.getExtensionValue("2.5.29.14");
    if (ri == null && ec && !byKeyId && certSki != null) {
      byte[] ski = org.bouncycastle.asn1.ASN1OctetString.getInstance(
          org.bouncycastle.asn1.ASN1OctetString.getInstance(certSki).getOctets()).getOctets();
      ri = env.getRecipientInfos().get(new KeyAgreeRecipientId(ski));
    }
    if (ri == null) throw new IllegalStateException("no RecipientInfo matches");
    return ri.getContent(recipient);
  }
}
