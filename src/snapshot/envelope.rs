//! Keel's encrypted backup envelope: an etcd snapshot file (bbolt + sha256 trailer, unchanged
//! inside) sealed with XChaCha20-Poly1305 in the STREAM construction (Hoang, Reyhanitabar, Rogaway,
//! Vizár, "Online authenticated-encryption and its nonce-reuse misuse-resistance", 2015). etcd has
//! no encrypted snapshot format; this is Keel's own, and `keel snapshot decrypt` turns it back into
//! the plain file that `etcdutl` reads.
//!
//! # Format, byte by byte (version 1)
//!
//! ```text
//! offset  len  field
//!      0    8  magic: 89 4B 45 45 4C 42 41 4B  ("\x89KEELBAK"; the high first byte keeps text
//!              tools off it, and a bbolt file starts with page id 0, i.e. eight zero bytes)
//!      8    1  format version: 1
//!      9    1  algorithm: 1 = XChaCha20-Poly1305 (32-byte key, 24-byte nonce, 16-byte tag)
//!     10    2  reserved: 00 00 (a reader refuses anything else)
//!     12    4  chunk size C: plaintext bytes per chunk, u32 big-endian, 1 ..= 16 MiB
//!              (Keel writes 64 KiB)
//!     16   19  nonce prefix: random, fresh for every file (from the OS CSPRNG)
//!     35       chunks, to the end of the file
//! ```
//!
//! The plaintext is cut into chunks of exactly C bytes, the last one holding the remaining
//! 0 ..= C bytes (it is the only chunk that may be empty: an empty plaintext is one empty last
//! chunk; a plaintext of exactly n*C bytes ends with a full last chunk, never with an empty one).
//! Chunk i (from 0) is stored as `ciphertext || tag` (its plaintext length + 16 bytes), sealed
//! with
//!
//! ```text
//! nonce = nonce prefix (19) || i as u32 big-endian (4) || last flag (1: 0x01 on the last chunk,
//!         0x00 on every other)
//! associated data = the 35 header bytes
//! ```
//!
//! Why each part: the counter in the nonce makes reordered or swapped chunks fail their tag; the
//! last flag makes a file cut at a chunk boundary fail (its new final chunk was sealed as "not
//! last"), and anything appended after the real last chunk fails too (a reader decrypts a chunk as
//! last only when the file ends right after it); the header as associated data binds version,
//! algorithm, chunk size and prefix, so editing any of them fails the first chunk. The per-file
//! random prefix keeps (key, nonce) pairs from repeating across files encrypted with one key
//! (19 random bytes: collisions are negligible for any realistic number of backups). At most 2^32
//! chunks (256 TiB at 64 KiB) fit one file.
//!
//! Memory stays at one chunk both ways: [`Encryptor`] is a `Write` that seals each chunk once the
//! next byte arrives, and [`decrypt`] reads one chunk plus one byte of look-ahead.
//!
//! # Key files
//!
//! A key file holds the 32-byte key as 64 hex digits (what `keel snapshot keygen` writes, with a
//! newline), as base64 of the 32 bytes (standard alphabet, padding optional), or as exactly 32 raw
//! bytes. Surrounding whitespace is ignored for the text forms.

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::Path;

use base64::Engine as _;
use chacha20poly1305::aead::{AeadInPlace, KeyInit};
use chacha20poly1305::{Tag, XChaCha20Poly1305, XNonce};

use crate::error::EnvelopeError;

/// The first eight bytes of every encrypted backup.
pub const MAGIC: [u8; 8] = *b"\x89KEELBAK";
/// The format version this code writes and reads.
pub const VERSION: u8 = 1;
/// Algorithm id of XChaCha20-Poly1305.
pub const ALG_XCHACHA20_POLY1305: u8 = 1;
/// Length of the nonce prefix stored in the header (24-byte nonce less counter and flag).
pub const PREFIX_LEN: usize = 19;
/// Length of the header, which is also the associated data of every chunk.
pub const HEADER_LEN: usize = 16 + PREFIX_LEN;
/// Length of a Poly1305 tag.
pub const TAG_LEN: usize = 16;
/// Plaintext bytes per chunk that Keel writes.
pub const DEFAULT_CHUNK_SIZE: usize = 64 * 1024;
/// The largest chunk size a reader accepts: the header is only authenticated with the first
/// chunk, so its size must be bounded before a buffer that large is allocated.
pub const MAX_CHUNK_SIZE: usize = 16 << 20;
/// Chunks are counted in a u32 inside the nonce.
const MAX_CHUNKS: u64 = 1 << 32;
/// Length of a key.
pub const KEY_LEN: usize = 32;

/// A 32-byte key. Its Debug output never shows the bytes.
#[derive(Clone)]
pub struct Key([u8; KEY_LEN]);

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Key(..)")
    }
}

impl Drop for Key {
    fn drop(&mut self) {
        // Best effort: do not leave key bytes in freed memory.
        self.0.fill(0);
    }
}

impl Key {
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Key {
        Key(bytes)
    }

    /// A fresh key from the operating system's CSPRNG.
    pub fn generate() -> Result<Key, EnvelopeError> {
        let mut bytes = [0u8; KEY_LEN];
        os_random(&mut bytes)?;
        Ok(Key(bytes))
    }

    /// Parse a key file's contents: 32 raw bytes, 64 hex digits, or base64 of 32 bytes.
    pub fn parse(contents: &[u8]) -> Result<Key, String> {
        if contents.len() == KEY_LEN {
            let mut bytes = [0u8; KEY_LEN];
            bytes.copy_from_slice(contents);
            return Ok(Key(bytes));
        }
        let text = std::str::from_utf8(contents)
            .map_err(|_| {
                format!("expected {KEY_LEN} raw bytes, 64 hex digits or base64, got {} bytes", contents.len())
            })?
            .trim();
        if text.len() == 2 * KEY_LEN && text.bytes().all(|b| b.is_ascii_hexdigit()) {
            let mut bytes = [0u8; KEY_LEN];
            for (i, pair) in text.as_bytes().chunks(2).enumerate() {
                let digits = std::str::from_utf8(pair).expect("ascii hex digits");
                bytes[i] = u8::from_str_radix(digits, 16).expect("checked hex digits");
            }
            return Ok(Key(bytes));
        }
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(text)
            .or_else(|_| base64::engine::general_purpose::STANDARD_NO_PAD.decode(text))
            .map_err(|_| "expected 32 raw bytes, 64 hex digits or base64 of 32 bytes".to_string())?;
        let bytes: [u8; KEY_LEN] = decoded
            .try_into()
            .map_err(|v: Vec<u8>| format!("base64 decodes to {} bytes, a key is {KEY_LEN}", v.len()))?;
        Ok(Key(bytes))
    }

    /// Read a key file (see the module doc for the accepted forms).
    pub fn read_file(path: &Path) -> Result<Key, EnvelopeError> {
        let contents =
            std::fs::read(path).map_err(|e| EnvelopeError::io(format!("read key file {}", path.display()), e))?;
        Key::parse(&contents).map_err(|reason| EnvelopeError::BadKey { path: path.display().to_string(), reason })
    }

    /// The key as 64 lowercase hex digits, the form `keel snapshot keygen` writes.
    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Generate a key into a new file (refusing to overwrite one), readable by its owner only.
    pub fn generate_file(path: &Path) -> Result<(), EnvelopeError> {
        let key = Key::generate()?;
        let context = || format!("create key file {}", path.display());
        let mut file =
            super::private_write_options().create_new(true).open(path).map_err(|e| EnvelopeError::io(context(), e))?;
        file.write_all(format!("{}\n", key.to_hex()).as_bytes()).map_err(|e| EnvelopeError::io(context(), e))?;
        file.sync_all().map_err(|e| EnvelopeError::io(context(), e))
    }

    fn cipher(&self) -> XChaCha20Poly1305 {
        XChaCha20Poly1305::new((&self.0).into())
    }
}

fn os_random(buf: &mut [u8]) -> Result<(), EnvelopeError> {
    use rand::TryRngCore;
    rand::rngs::OsRng
        .try_fill_bytes(buf)
        .map_err(|e| EnvelopeError::io("read the OS random source", io::Error::other(e)))
}

/// The parsed header.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Header {
    chunk_size: usize,
    prefix: [u8; PREFIX_LEN],
}

impl Header {
    fn encode(&self) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        out[..8].copy_from_slice(&MAGIC);
        out[8] = VERSION;
        out[9] = ALG_XCHACHA20_POLY1305;
        // out[10..12]: reserved, zero.
        out[12..16].copy_from_slice(&(self.chunk_size as u32).to_be_bytes());
        out[16..].copy_from_slice(&self.prefix);
        out
    }

    fn decode(bytes: &[u8; HEADER_LEN]) -> Result<Header, EnvelopeError> {
        if bytes[..8] != MAGIC {
            return Err(EnvelopeError::NotEnvelope);
        }
        if bytes[8] != VERSION {
            return Err(EnvelopeError::UnsupportedVersion(bytes[8]));
        }
        if bytes[9] != ALG_XCHACHA20_POLY1305 {
            return Err(EnvelopeError::UnsupportedAlgorithm(bytes[9]));
        }
        if bytes[10..12] != [0, 0] {
            return Err(EnvelopeError::BadHeader("reserved bytes are not zero".into()));
        }
        let chunk_size = u32::from_be_bytes(bytes[12..16].try_into().expect("4 bytes")) as usize;
        if chunk_size == 0 || chunk_size > MAX_CHUNK_SIZE {
            return Err(EnvelopeError::BadHeader(format!("chunk size {chunk_size} is outside 1..={MAX_CHUNK_SIZE}")));
        }
        let mut prefix = [0u8; PREFIX_LEN];
        prefix.copy_from_slice(&bytes[16..]);
        Ok(Header { chunk_size, prefix })
    }
}

fn nonce(prefix: &[u8; PREFIX_LEN], counter: u64, last: bool) -> XNonce {
    let mut n = [0u8; 24];
    n[..PREFIX_LEN].copy_from_slice(prefix);
    n[PREFIX_LEN..PREFIX_LEN + 4].copy_from_slice(&(counter as u32).to_be_bytes());
    n[23] = u8::from(last);
    n.into()
}

/// Whether `prefix` (the first bytes of a file) starts with the envelope's magic.
pub fn has_magic(prefix: &[u8]) -> bool {
    prefix.len() >= MAGIC.len() && prefix[..MAGIC.len()] == MAGIC
}

/// Whether the file at `path` is an encrypted backup (judged by its magic alone).
pub fn is_encrypted_file(path: &Path) -> Result<bool, EnvelopeError> {
    let mut file = File::open(path).map_err(|e| EnvelopeError::io(format!("open {}", path.display()), e))?;
    let mut start = [0u8; MAGIC.len()];
    let n = read_full(&mut file, &mut start).map_err(|e| EnvelopeError::io(format!("read {}", path.display()), e))?;
    Ok(has_magic(&start[..n]))
}

/// Seals everything written to it into the envelope on `out`. Call [`Encryptor::finish`] at the
/// end: without it the file has no last chunk and every reader rejects it as truncated.
pub struct Encryptor<W: Write> {
    out: W,
    cipher: XChaCha20Poly1305,
    header: [u8; HEADER_LEN],
    prefix: [u8; PREFIX_LEN],
    chunk_size: usize,
    buf: Vec<u8>,
    counter: u64,
}

impl<W: Write> Encryptor<W> {
    /// Write the header (with a fresh random nonce prefix) to `out`, using Keel's chunk size.
    pub fn new(key: &Key, out: W) -> Result<Self, EnvelopeError> {
        Self::with_chunk_size(key, out, DEFAULT_CHUNK_SIZE)
    }

    pub fn with_chunk_size(key: &Key, mut out: W, chunk_size: usize) -> Result<Self, EnvelopeError> {
        if chunk_size == 0 || chunk_size > MAX_CHUNK_SIZE {
            return Err(EnvelopeError::BadHeader(format!("chunk size {chunk_size} is outside 1..={MAX_CHUNK_SIZE}")));
        }
        let mut prefix = [0u8; PREFIX_LEN];
        os_random(&mut prefix)?;
        let header = Header { chunk_size, prefix }.encode();
        out.write_all(&header).map_err(|e| EnvelopeError::io("write the envelope header", e))?;
        Ok(Encryptor {
            out,
            cipher: key.cipher(),
            header,
            prefix,
            chunk_size,
            buf: Vec::with_capacity(chunk_size + TAG_LEN),
            counter: 0,
        })
    }

    fn seal(&mut self, last: bool) -> Result<(), EnvelopeError> {
        if self.counter >= MAX_CHUNKS {
            return Err(EnvelopeError::TooManyChunks { max: MAX_CHUNKS });
        }
        let nonce = nonce(&self.prefix, self.counter, last);
        let tag = self
            .cipher
            .encrypt_in_place_detached(&nonce, &self.header, &mut self.buf)
            .map_err(|_| EnvelopeError::BadHeader("chunk too large for the cipher".into()))?;
        self.buf.extend_from_slice(&tag);
        self.out.write_all(&self.buf).map_err(|e| EnvelopeError::io("write an encrypted chunk", e))?;
        self.buf.clear();
        self.counter += 1;
        Ok(())
    }

    /// Seal the last chunk and hand back the writer (flushed, not synced).
    pub fn finish(mut self) -> Result<W, EnvelopeError> {
        self.seal(true)?;
        self.out.flush().map_err(|e| EnvelopeError::io("flush the encrypted backup", e))?;
        Ok(self.out)
    }
}

impl<W: Write> Write for Encryptor<W> {
    fn write(&mut self, mut data: &[u8]) -> io::Result<usize> {
        let len = data.len();
        while !data.is_empty() {
            // A full chunk is sealed only once more data arrives, so that the final chunk is
            // always the one `finish` seals with the last flag.
            if self.buf.len() == self.chunk_size {
                self.seal(false).map_err(io::Error::other)?;
            }
            let take = (self.chunk_size - self.buf.len()).min(data.len());
            self.buf.extend_from_slice(&data[..take]);
            data = &data[take..];
        }
        Ok(len)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

/// Read until `buf` is full or the input ends; returns the bytes read.
fn read_full<R: Read>(input: &mut R, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match input.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Decrypt and authenticate an envelope from `input` into `out`, one chunk at a time; returns the
/// plaintext length. Everything written to `out` before an error is authentic but incomplete, so a
/// caller writes into a temporary file and discards it on error.
pub fn decrypt<R: Read, W: Write>(key: &Key, mut input: R, mut out: W) -> Result<u64, EnvelopeError> {
    let read_err = |e| EnvelopeError::io("read the encrypted backup", e);
    let mut header = [0u8; HEADER_LEN];
    let n = read_full(&mut input, &mut header).map_err(read_err)?;
    if n < HEADER_LEN {
        if !has_magic(&header[..n]) {
            return Err(EnvelopeError::NotEnvelope);
        }
        return Err(EnvelopeError::Truncated(format!("{n} bytes, shorter than the {HEADER_LEN}-byte header")));
    }
    let parsed = Header::decode(&header)?;
    let cipher = key.cipher();
    let frame = parsed.chunk_size + TAG_LEN;
    let mut buf = vec![0u8; frame];
    let mut lookahead: Option<u8> = None;
    let mut total = 0u64;
    for counter in 0..MAX_CHUNKS {
        let mut n = 0;
        if let Some(b) = lookahead.take() {
            buf[0] = b;
            n = 1;
        }
        n += read_full(&mut input, &mut buf[n..]).map_err(read_err)?;
        // A chunk is the last one exactly when the file ends with it: a short frame, or a full
        // one followed by end of file.
        let last = n < frame || {
            let mut one = [0u8; 1];
            match read_full(&mut input, &mut one).map_err(read_err)? {
                0 => true,
                _ => {
                    lookahead = Some(one[0]);
                    false
                }
            }
        };
        if n < TAG_LEN {
            return Err(EnvelopeError::Truncated(if n == 0 {
                "no chunk after the header".to_string()
            } else {
                format!("chunk {counter} has {n} bytes, less than its {TAG_LEN}-byte tag")
            }));
        }
        let (body, tag) = buf[..n].split_at_mut(n - TAG_LEN);
        let tag = Tag::clone_from_slice(tag);
        let nonce_for = |last| nonce(&parsed.prefix, counter, last);
        if cipher.decrypt_in_place_detached(&nonce_for(last), &header, body, &tag).is_err() {
            // Tell a file cut at a chunk boundary from a damaged one: its final chunk then
            // authenticates as a middle chunk (a failed decryption leaves `body` untouched).
            if last && cipher.decrypt_in_place_detached(&nonce_for(false), &header, body, &tag).is_ok() {
                return Err(EnvelopeError::Truncated(format!(
                    "the file ends after chunk {counter}, which was not the last one written"
                )));
            }
            return Err(EnvelopeError::Authentication { chunk: counter });
        }
        out.write_all(body).map_err(|e| EnvelopeError::io("write the decrypted snapshot", e))?;
        total += body.len() as u64;
        if last {
            out.flush().map_err(|e| EnvelopeError::io("write the decrypted snapshot", e))?;
            return Ok(total);
        }
    }
    Err(EnvelopeError::TooManyChunks { max: MAX_CHUNKS })
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHUNK: usize = 64;

    fn key(b: u8) -> Key {
        Key::from_bytes([b; KEY_LEN])
    }

    fn plaintext(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 31 % 251) as u8).collect()
    }

    /// Encrypt with the test chunk size, writing in odd-sized pieces to exercise buffering.
    fn seal(k: &Key, data: &[u8]) -> Vec<u8> {
        let mut enc = Encryptor::with_chunk_size(k, Vec::new(), CHUNK).unwrap();
        for piece in data.chunks(7) {
            enc.write_all(piece).unwrap();
        }
        enc.finish().unwrap()
    }

    fn open(k: &Key, sealed: &[u8]) -> Result<Vec<u8>, EnvelopeError> {
        let mut out = Vec::new();
        let n = decrypt(k, sealed, &mut out)?;
        assert_eq!(n, out.len() as u64);
        Ok(out)
    }

    /// Byte offset of chunk `i` (all chunks before it are full).
    fn chunk_at(i: usize) -> usize {
        HEADER_LEN + i * (CHUNK + TAG_LEN)
    }

    #[test]
    fn round_trips_at_chunk_boundaries() {
        let k = key(1);
        for len in [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 2 * CHUNK, 2 * CHUNK + 1, 5 * CHUNK + 17] {
            let data = plaintext(len);
            let sealed = seal(&k, &data);
            // One tag per chunk; an empty plaintext is one empty last chunk, and an exact multiple
            // of the chunk size has no empty trailing chunk.
            let chunks = len.div_ceil(CHUNK).max(1);
            assert_eq!(sealed.len(), HEADER_LEN + len + chunks * TAG_LEN, "length {len}");
            assert_eq!(open(&k, &sealed).unwrap(), data, "length {len}");
        }
    }

    #[test]
    fn header_layout_is_as_documented() {
        let sealed = seal(&key(1), b"x");
        assert_eq!(&sealed[..8], b"\x89KEELBAK");
        assert_eq!(sealed[8], 1, "version");
        assert_eq!(sealed[9], 1, "algorithm");
        assert_eq!(&sealed[10..12], &[0, 0], "reserved");
        assert_eq!(&sealed[12..16], &(CHUNK as u32).to_be_bytes(), "chunk size");
        assert!(has_magic(&sealed));
        // A bbolt file (an etcd snapshot) starts with page id 0.
        assert!(!has_magic(&[0u8; 16]));
    }

    #[test]
    fn every_file_gets_a_fresh_nonce_prefix() {
        let (a, b) = (seal(&key(1), b"same"), seal(&key(1), b"same"));
        assert_ne!(a[16..HEADER_LEN], b[16..HEADER_LEN]);
        assert_ne!(a[HEADER_LEN..], b[HEADER_LEN..]);
    }

    #[test]
    fn the_default_chunk_size_round_trips() {
        let k = key(2);
        let data = plaintext(3 * DEFAULT_CHUNK_SIZE + 5);
        let mut enc = Encryptor::new(&k, Vec::new()).unwrap();
        enc.write_all(&data).unwrap();
        let sealed = enc.finish().unwrap();
        assert_eq!(open(&k, &sealed).unwrap(), data);
    }

    #[test]
    fn a_wrong_key_fails_on_the_first_chunk() {
        let sealed = seal(&key(1), &plaintext(3 * CHUNK));
        assert!(matches!(open(&key(2), &sealed), Err(EnvelopeError::Authentication { chunk: 0 })));
        let empty = seal(&key(1), b"");
        assert!(matches!(open(&key(2), &empty), Err(EnvelopeError::Authentication { chunk: 0 })));
    }

    #[test]
    fn any_flipped_bit_is_detected() {
        let k = key(3);
        let sealed = seal(&k, &plaintext(2 * CHUNK + 10));
        // Every byte of the header (magic, version, algorithm, reserved and chunk size fail their
        // own checks; the prefix fails authentication), of the bodies and of the tags.
        for at in 0..sealed.len() {
            for bit in [0x01u8, 0x80] {
                let mut bad = sealed.clone();
                bad[at] ^= bit;
                let result = open(&k, &bad);
                assert!(result.is_err(), "flip 0x{bit:02x} at byte {at} went unnoticed");
            }
        }
        let mut bad = sealed.clone();
        bad[20] ^= 1; // nonce prefix
        assert!(matches!(open(&k, &bad), Err(EnvelopeError::Authentication { chunk: 0 })));
        let mut bad = sealed.clone();
        bad[chunk_at(1) + 3] ^= 1; // body of chunk 1
        assert!(matches!(open(&k, &bad), Err(EnvelopeError::Authentication { chunk: 1 })));
        let mut bad = sealed.clone();
        let last_tag = sealed.len() - 1;
        bad[last_tag] ^= 1; // tag of the last chunk
        assert!(matches!(open(&k, &bad), Err(EnvelopeError::Authentication { chunk: 2 })));
        let mut bad = sealed;
        bad[8] = 2;
        assert!(matches!(open(&k, &bad), Err(EnvelopeError::UnsupportedVersion(2))));
    }

    #[test]
    fn truncation_at_every_chunk_boundary_is_detected() {
        let k = key(4);
        for len in [3 * CHUNK, 3 * CHUNK + 9] {
            let sealed = seal(&k, &plaintext(len));
            for cut in (0..=3).map(chunk_at).filter(|&c| c < sealed.len()) {
                let result = open(&k, &sealed[..cut]);
                assert!(matches!(result, Err(EnvelopeError::Truncated(_))), "cut at {cut} of {len}: {result:?}");
            }
            // And mid-chunk, including inside a tag.
            for cut in [1, HEADER_LEN - 1, chunk_at(1) + 5, sealed.len() - 1] {
                assert!(open(&k, &sealed[..cut]).is_err(), "cut at {cut} of {len}");
            }
        }
    }

    #[test]
    fn appended_garbage_is_detected() {
        let k = key(5);
        for len in [0, CHUNK, CHUNK + 3] {
            let sealed = seal(&k, &plaintext(len));
            for extra in [&b"\0"[..], &[7u8; TAG_LEN], &[9u8; CHUNK + TAG_LEN]] {
                let mut bad = sealed.clone();
                bad.extend_from_slice(extra);
                assert!(open(&k, &bad).is_err(), "{} bytes appended to {len}", extra.len());
            }
            // Appending a copy of a valid chunk does not pass either.
            let mut bad = sealed.clone();
            bad.extend_from_slice(&sealed[HEADER_LEN..]);
            assert!(open(&k, &bad).is_err(), "a chunk appended to {len}");
        }
    }

    #[test]
    fn swapped_and_repeated_chunks_are_detected() {
        let k = key(6);
        let sealed = seal(&k, &plaintext(3 * CHUNK + 1));
        let frame = CHUNK + TAG_LEN;
        let chunk = |i: usize| sealed[chunk_at(i)..chunk_at(i) + frame].to_vec();
        let mut swapped = sealed[..HEADER_LEN].to_vec();
        for i in [1, 0, 2] {
            swapped.extend(chunk(i));
        }
        swapped.extend_from_slice(&sealed[chunk_at(3)..]);
        assert!(matches!(open(&k, &swapped), Err(EnvelopeError::Authentication { chunk: 0 })));
        let mut repeated = sealed[..chunk_at(2)].to_vec();
        repeated.extend(chunk(1));
        repeated.extend_from_slice(&sealed[chunk_at(3)..]);
        assert!(matches!(open(&k, &repeated), Err(EnvelopeError::Authentication { chunk: 2 })));
        // A chunk moved between two files under the same key fails: the prefixes differ.
        let other = seal(&k, &plaintext(3 * CHUNK + 1));
        let mut spliced = sealed[..chunk_at(1)].to_vec();
        spliced.extend_from_slice(&other[chunk_at(1)..]);
        assert!(matches!(open(&k, &spliced), Err(EnvelopeError::Authentication { chunk: 1 })));
    }

    #[test]
    fn not_an_envelope_is_said_so() {
        assert!(matches!(open(&key(1), &[0u8; 100]), Err(EnvelopeError::NotEnvelope)));
        assert!(matches!(open(&key(1), b""), Err(EnvelopeError::NotEnvelope)));
    }

    #[test]
    fn a_huge_chunk_size_in_the_header_is_refused_before_allocating() {
        let mut sealed = seal(&key(1), b"abc");
        sealed[12..16].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(matches!(open(&key(1), &sealed), Err(EnvelopeError::BadHeader(_))));
    }

    #[test]
    fn key_files_in_every_documented_form() {
        let raw: [u8; KEY_LEN] = std::array::from_fn(|i| i as u8 * 7);
        let hex: String = raw.iter().map(|b| format!("{b:02X}")).collect();
        let b64 = base64::engine::general_purpose::STANDARD.encode(raw);
        for form in [raw.to_vec(), format!("{hex}\n").into_bytes(), format!("  {b64}\n").into_bytes()] {
            assert_eq!(Key::parse(&form).unwrap().0, raw);
        }
        let unpadded = b64.trim_end_matches('=');
        assert_eq!(Key::parse(unpadded.as_bytes()).unwrap().0, raw);
        assert!(Key::parse(b"too short").is_err());
        assert!(Key::parse(&[0u8; 31]).is_err());
        assert!(Key::parse(base64::engine::general_purpose::STANDARD.encode([1u8; 16]).as_bytes()).is_err());
        assert_eq!(format!("{:?}", Key::from_bytes(raw)), "Key(..)");
    }

    #[test]
    fn keygen_writes_a_fresh_hex_key_once() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a.key"), dir.path().join("b.key"));
        Key::generate_file(&a).unwrap();
        Key::generate_file(&b).unwrap();
        let text = std::fs::read_to_string(&a).unwrap();
        assert_eq!(text.trim().len(), 64);
        assert_eq!(Key::read_file(&a).unwrap().to_hex(), text.trim());
        assert_ne!(Key::read_file(&a).unwrap().0, Key::read_file(&b).unwrap().0);
        assert!(Key::generate_file(&a).is_err(), "an existing key file is never overwritten");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(std::fs::metadata(&a).unwrap().permissions().mode() & 0o777, 0o600);
        }
    }
}
