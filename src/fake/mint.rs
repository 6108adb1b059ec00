//! Ids and tokens that look random yet never repeat: a bijective mix of counters and seeds.
//! A leaf of the fake: the state and the token book both mint with it.

/// splitmix64's finaliser: a bijection on u64 that scrambles well.
pub(crate) fn mix(mut value: u64) -> u64 {
    value = value.wrapping_add(0x9E37_79B9_7F4A_7C15);
    value = (value ^ (value >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    value = (value ^ (value >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    value ^ (value >> 31)
}
