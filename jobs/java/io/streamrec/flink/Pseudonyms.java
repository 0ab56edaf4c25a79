package io.streamrec.flink;

import java.io.IOException;
import java.io.Serializable;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Paths;
import java.security.GeneralSecurityException;
import java.util.Arrays;

import javax.crypto.Mac;
import javax.crypto.spec.SecretKeySpec;

/**
 * The JVM half of udfs/privacy.py: a user id's pseudonym is the lowercase hex of
 * HMAC-SHA256(key, UTF-8 of the id as Python's str(canonical_id(...)) spells it, which is
 * the envelope's key). The key is the bytes of {@code keyFile}, or the UTF-8 bytes of the
 * variable {@code keyEnv}, without trailing ASCII whitespace, at least {@link #MIN_KEY_BYTES}.
 *
 * <p>Only where the key lives travels in the job graph; the key itself is read at
 * {@link #open()} on each TaskManager and never printed (errors name the source).
 */
public final class Pseudonyms implements Serializable {
    private static final long serialVersionUID = 1L;
    static final int MIN_KEY_BYTES = 32;
    private static final String ALGORITHM = "HmacSHA256";
    private static final char[] HEX = "0123456789abcdef".toCharArray();

    private final String keyFile;
    private final String keyEnv;
    private transient Mac mac;

    /** @param keyFile {@code privacy.key_file} ("" for none); @param keyEnv {@code privacy.key_env} ("" for none) */
    public Pseudonyms(String keyFile, String keyEnv) {
        if (keyFile.isEmpty() == keyEnv.isEmpty()) {
            throw new IllegalArgumentException("exactly one of privacy.key_file and privacy.key_env must be set");
        }
        this.keyFile = keyFile;
        this.keyEnv = keyEnv;
    }

    /** Reads the key; fails naming its source when it is missing or short. */
    public void open() throws IOException {
        mac = newMac(loadKey(keyFile, keyEnv));
    }

    /** The pseudonym of a canonical id (the envelope's key). */
    public String apply(String canonicalId) {
        return hex(mac.doFinal(canonicalId.getBytes(StandardCharsets.UTF_8)));
    }

    /** One pseudonym without a source, for the agreement tests. */
    public static String pseudonym(byte[] key, String canonicalId) {
        return hex(newMac(key).doFinal(canonicalId.getBytes(StandardCharsets.UTF_8)));
    }

    /** The key from its source, as udfs/privacy.load_key reads it. */
    public static byte[] loadKey(String keyFile, String keyEnv) throws IOException {
        String source;
        byte[] raw;
        if (!keyFile.isEmpty()) {
            source = "privacy.key_file (" + keyFile + ")";
            raw = Files.readAllBytes(Paths.get(keyFile));
        } else {
            source = "privacy.key_env ($" + keyEnv + ")";
            String value = System.getenv(keyEnv);
            if (value == null) {
                throw new IOException(source + ": environment variable '" + keyEnv + "' is not set");
            }
            raw = value.getBytes(StandardCharsets.UTF_8);
        }
        byte[] key = stripTrailingWhitespace(raw);
        if (key.length < MIN_KEY_BYTES) {
            throw new IOException(source + ": the pseudonym key has " + key.length + " bytes, at least "
                    + MIN_KEY_BYTES + " needed");
        }
        return key;
    }

    static byte[] stripTrailingWhitespace(byte[] raw) {
        int end = raw.length;
        while (end > 0 && (raw[end - 1] == ' ' || raw[end - 1] == '\t' || raw[end - 1] == '\r'
                || raw[end - 1] == '\n')) {
            end--;
        }
        return Arrays.copyOf(raw, end);
    }

    private static Mac newMac(byte[] key) {
        try {
            Mac mac = Mac.getInstance(ALGORITHM);
            mac.init(new SecretKeySpec(key, ALGORITHM));
            return mac;
        } catch (GeneralSecurityException e) {
            throw new IllegalStateException("HMAC-SHA256 unavailable", e);
        }
    }

    private static String hex(byte[] digest) {
        char[] out = new char[digest.length * 2];
        for (int i = 0; i < digest.length; i++) {
            out[2 * i] = HEX[(digest[i] >> 4) & 0xF];
            out[2 * i + 1] = HEX[digest[i] & 0xF];
        }
        return new String(out);
    }
}
