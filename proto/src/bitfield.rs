//! Which chunks a peer has: one bit per chunk, most significant bit first (as in BitTorrent).

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Why a bitfield does not fit a file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BitfieldError {
    #[error("bitfield has {got} bytes, expected {expected} for {chunks} chunks")]
    Length {
        got: usize,
        expected: usize,
        chunks: u64,
    },
    #[error("bitfield has bits set past the last chunk")]
    SpareBits,
    #[error("bitfield is not valid base64")]
    Base64,
}

/// A set of chunk indices, stored as bytes (bit 7 of byte 0 is chunk 0).
///
/// The JSON form is standard base64 of those bytes.
#[derive(Clone, PartialEq, Eq, Hash, Default)]
pub struct Bitfield {
    bytes: Vec<u8>,
    len: u64,
}

impl std::fmt::Debug for Bitfield {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Bitfield({}/{})", self.count_ones(), self.len)
    }
}

impl Bitfield {
    /// Bytes needed for `chunks` bits.
    pub const fn byte_len(chunks: u64) -> usize {
        chunks.div_ceil(8) as usize
    }

    /// An empty set sized for `chunks` chunks.
    pub fn new(chunks: u64) -> Self {
        Self {
            bytes: vec![0; Self::byte_len(chunks)],
            len: chunks,
        }
    }

    /// A full set: every chunk present.
    pub fn full(chunks: u64) -> Self {
        let mut b = Self::new(chunks);
        for i in 0..chunks {
            b.set(i);
        }
        b
    }

    /// Takes raw bytes from the network or storage and checks them against the chunk count.
    pub fn from_bytes(bytes: Vec<u8>, chunks: u64) -> Result<Self, BitfieldError> {
        let expected = Self::byte_len(chunks);
        if bytes.len() != expected {
            return Err(BitfieldError::Length {
                got: bytes.len(),
                expected,
                chunks,
            });
        }
        let spare = (expected as u64 * 8 - chunks) as u32;
        if spare > 0 {
            let mask = (1u8 << spare) - 1;
            if bytes.last().is_some_and(|last| last & mask != 0) {
                return Err(BitfieldError::SpareBits);
            }
        }
        Ok(Self { bytes, len: chunks })
    }

    /// Decodes the base64 JSON form; the chunk count comes from the manifest.
    pub fn from_base64(s: &str, chunks: u64) -> Result<Self, BitfieldError> {
        let bytes = STANDARD.decode(s).map_err(|_| BitfieldError::Base64)?;
        Self::from_bytes(bytes, chunks)
    }

    pub fn to_base64(&self) -> String {
        STANDARD.encode(&self.bytes)
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    pub fn into_bytes(self) -> Vec<u8> {
        self.bytes
    }

    /// Number of chunks this bitfield describes.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn get(&self, i: u64) -> bool {
        i < self.len && self.bytes[(i / 8) as usize] & (0x80 >> (i % 8)) != 0
    }

    /// Marks chunk `i` present; indices past the end are ignored.
    pub fn set(&mut self, i: u64) {
        if i < self.len {
            self.bytes[(i / 8) as usize] |= 0x80 >> (i % 8);
        }
    }

    pub fn count_ones(&self) -> u64 {
        self.bytes.iter().map(|b| u64::from(b.count_ones())).sum()
    }

    pub fn is_complete(&self) -> bool {
        self.count_ones() == self.len
    }
}

/// Serialises as base64 only; deserialising needs the chunk count, so API types carry the raw
/// string and validate it with [`Bitfield::from_base64`].
impl Serialize for Bitfield {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_base64())
    }
}

impl<'de> Deserialize<'de> for Bitfield {
    /// Without a chunk count the length is taken as all the bits of the bytes.
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        let bytes = STANDARD.decode(s).map_err(serde::de::Error::custom)?;
        let len = bytes.len() as u64 * 8;
        Ok(Self { bytes, len })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn golden_bytes() {
        let mut b = Bitfield::new(10);
        b.set(0);
        b.set(9);
        assert_eq!(b.as_bytes(), &[0x80, 0x40]);
        assert_eq!(b.to_base64(), "gEA=");
        assert_eq!(b.count_ones(), 2);
        assert!(b.get(9) && !b.get(8) && !b.get(10));
    }

    #[test]
    fn rejects_wrong_length_and_spare_bits() {
        assert!(matches!(
            Bitfield::from_bytes(vec![0xff], 10),
            Err(BitfieldError::Length { .. })
        ));
        assert_eq!(
            Bitfield::from_bytes(vec![0xff, 0xff], 10),
            Err(BitfieldError::SpareBits)
        );
        assert!(
            Bitfield::from_bytes(vec![0xff, 0xc0], 10)
                .unwrap()
                .is_complete()
        );
        assert_eq!(Bitfield::from_base64("!!", 3), Err(BitfieldError::Base64));
    }

    proptest! {
        #[test]
        fn base64_roundtrip(chunks in 0u64..2000, seed in any::<u64>()) {
            let mut b = Bitfield::new(chunks);
            let mut x = seed;
            for i in 0..chunks {
                x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                if x >> 63 == 1 { b.set(i); }
            }
            let back = Bitfield::from_base64(&b.to_base64(), chunks).unwrap();
            prop_assert_eq!(&back, &b);
            prop_assert_eq!(Bitfield::full(chunks).is_complete(), true);
        }
    }
}
