//! Incremental Internet checksum updates (RFC 1624, eqn. 3).
//!
//! Values are taken as they sit in the packet: one's complement sums do not
//! care about byte order as long as every term has the same one.

#[inline(always)]
fn fold(mut sum: u32) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum as u16
}

/// `check` after one 16-bit word of the covered data changed.
#[inline(always)]
pub fn replace2(check: u16, old: u16, new: u16) -> u16 {
    !fold(!check as u32 + !old as u32 + new as u32)
}

/// `check` after one 32-bit word of the covered data changed.
#[inline(always)]
pub fn replace4(check: u16, old: u32, new: u32) -> u16 {
    !fold(
        !check as u32
            + !(old >> 16) as u16 as u32
            + !(old as u16) as u32
            + (new >> 16)
            + (new & 0xffff),
    )
}
