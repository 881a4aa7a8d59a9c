//! Selection tables for new flows: weighted Maglev (Eisenbud et al.,
//! NSDI 2016) over a prime number of slots, [`SELECTION_SLOTS`].
//!
//! Pure and deterministic: a region's permutation of the slots comes from
//! SHA-256 of its name, and regions fill in name order, so two gateways with
//! the same config build the same table and send a flow to the same region.
//!
//! [`selection`] layers two tables so that a region leaving or joining the
//! set that takes new flows moves only that region's share: slots of the
//! *base* table (every region of the service, by weight) stay where they are
//! while their region takes new flows; only the slots of regions that do not
//! are filled from a table over the regions that do.

use redirector_common::{NO_REGION, SELECTION_SLOTS};
use sha2::{Digest, Sha256};

/// A region as the tables see it; `weight` is its relative share of slots.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry<'a> {
    pub region: u8,
    pub name: &'a str,
    pub weight: u32,
}

/// Every slot filled with a region of positive weight, each taking
/// slots in proportion to its weight (to within one slot per round);
/// all [`NO_REGION`] when no entry has a positive weight.
pub fn table(entries: &[Entry]) -> Vec<u8> {
    let mut entries: Vec<&Entry> = entries.iter().filter(|e| e.weight > 0).collect();
    entries.sort_by(|a, b| a.name.cmp(b.name).then(a.region.cmp(&b.region)));
    let mut slots = vec![NO_REGION; SELECTION_SLOTS];
    let Some(max_weight) = entries.iter().map(|e| e.weight as u64).max() else {
        return slots;
    };
    let mut walks: Vec<Walk> = entries.iter().map(|e| Walk::new(e.name)).collect();
    // Each round every region earns its weight in credit; the heaviest
    // takes exactly one slot per round, the others in proportion.
    let mut credit = vec![0u64; entries.len()];
    let mut filled = 0;
    while filled < SELECTION_SLOTS {
        for (i, entry) in entries.iter().enumerate() {
            credit[i] += entry.weight as u64;
            while credit[i] >= max_weight && filled < SELECTION_SLOTS {
                credit[i] -= max_weight;
                let slot = walks[i].next_free(&slots);
                slots[slot] = entry.region;
                filled += 1;
            }
        }
    }
    slots
}

/// The table a service's new flows use. `base`: every region of the
/// service with its weight. `takers`: the regions that take new flows now,
/// with theirs. A slot keeps its base region while that region is a taker;
/// the others go by a table over the takers alone, so the takers' set
/// changing by one region moves that region's slots and no others.
pub fn selection(base: &[Entry], takers: &[Entry]) -> Vec<u8> {
    let takers: Vec<Entry> = takers.iter().copied().filter(|e| e.weight > 0).collect();
    match takers.as_slice() {
        [] => return vec![NO_REGION; SELECTION_SLOTS],
        [only] => return vec![only.region; SELECTION_SLOTS],
        _ => {}
    }
    let fallback = table(&takers);
    let is_taker = |region: u8| takers.iter().any(|e| e.region == region);
    table(base)
        .into_iter()
        .zip(fallback)
        .map(|(kept, other)| if is_taker(kept) { kept } else { other })
        .collect()
}

/// Share of the slots each region holds, in percent, by region id.
pub fn shares(slots: &[u8]) -> Vec<(u8, f64)> {
    let mut counts = [0usize; 256];
    for &region in slots {
        counts[region as usize] += 1;
    }
    counts
        .iter()
        .enumerate()
        .filter(|&(region, &n)| n > 0 && region != NO_REGION as usize)
        .map(|(region, &n)| (region as u8, n as f64 * 100.0 / slots.len() as f64))
        .collect()
}

/// A region's walk through its permutation of the slots: offset, then
/// steps of `skip`, which visit every slot since the table size is prime.
struct Walk {
    next: u64,
    skip: u64,
}

impl Walk {
    fn new(name: &str) -> Self {
        let digest = Sha256::digest(name.as_bytes());
        let word = |i: usize| u64::from_be_bytes(digest[i..i + 8].try_into().expect("8 bytes"));
        let size = SELECTION_SLOTS as u64;
        Walk {
            next: word(0) % size,
            skip: word(8) % (size - 1) + 1,
        }
    }

    fn next_free(&mut self, slots: &[u8]) -> usize {
        loop {
            let slot = self.next as usize;
            self.next = (self.next + self.skip) % SELECTION_SLOTS as u64;
            if slots[slot] == NO_REGION {
                return slot;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NAMES: [&str; 5] = ["region1", "region2", "region3", "region4", "region5"];

    fn entries(weights: &[u32]) -> Vec<Entry<'static>> {
        weights
            .iter()
            .enumerate()
            .map(|(i, &weight)| Entry { region: i as u8, name: NAMES[i], weight })
            .collect()
    }

    fn share_of(slots: &[u8], region: u8) -> f64 {
        shares(slots).iter().find(|s| s.0 == region).map_or(0.0, |s| s.1)
    }

    fn moved(a: &[u8], b: &[u8]) -> Vec<usize> {
        (0..a.len()).filter(|&i| a[i] != b[i]).collect()
    }

    #[test]
    fn the_same_regions_give_the_same_table_whatever_their_order() {
        let regions = entries(&[1, 2, 3]);
        let mut reversed = regions.clone();
        reversed.reverse();
        let built = table(&regions);
        assert_eq!(built, table(&reversed));
        assert!(!built.contains(&NO_REGION));
    }

    #[test]
    fn the_table_is_the_same_in_every_build() {
        // Two gateways, or two releases, with the same config must agree
        // slot by slot: the digest of a known table is pinned here.
        let digest = Sha256::digest(table(&entries(&[1, 1, 2])));
        assert_eq!(hex(&digest[..8]), PINNED_DIGEST);
        // Names and weights decide, not ids.
        let renumbered: Vec<Entry> = entries(&[1, 1, 2])
            .into_iter()
            .map(|e| Entry { region: e.region + 10, ..e })
            .collect();
        let shifted: Vec<u8> = table(&renumbered).into_iter().map(|r| r - 10).collect();
        assert_eq!(table(&entries(&[1, 1, 2])), shifted);
    }

    const PINNED_DIGEST: &str = "5be7e37afa802e8a";

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn slots_follow_the_weights() {
        for weights in [vec![1, 1], vec![1, 3], vec![5, 3, 2], vec![1, 1, 1, 1, 1], vec![100, 1]] {
            let built = table(&entries(&weights));
            let total: u32 = weights.iter().sum();
            for (i, &w) in weights.iter().enumerate() {
                let want = w as f64 * 100.0 / total as f64;
                let got = share_of(&built, i as u8);
                assert!((got - want).abs() < 0.1, "weights {weights:?}: region {i} has {got:.3} %, want {want:.3} %");
            }
        }
    }

    #[test]
    fn zero_weights_take_no_slot_and_no_weight_selects_nowhere() {
        let built = table(&entries(&[0, 1, 1]));
        assert_eq!(share_of(&built, 0), 0.0);
        assert!(table(&entries(&[0, 0])).iter().all(|&r| r == NO_REGION));
        assert!(selection(&entries(&[1, 1]), &[]).iter().all(|&r| r == NO_REGION));
    }

    #[test]
    fn losing_a_region_moves_only_its_slots_and_regaining_it_moves_them_back() {
        for n in 2..=5usize {
            let base = entries(&vec![1; n]);
            let all = selection(&base, &base);
            assert_eq!(all, table(&base));
            for lost in 0..n {
                let takers: Vec<Entry> = base.iter().copied().filter(|e| e.region != lost as u8).collect();
                let without = selection(&base, &takers);
                let moved_off = moved(&all, &without);
                assert!(moved_off.iter().all(|&i| all[i] == lost as u8), "n={n}: a slot of another region moved");
                assert_eq!(moved_off.len(), all.iter().filter(|&&r| r == lost as u8).count());
                assert!(!without.contains(&(lost as u8)));
                // The lost share spreads over the others evenly.
                for e in &takers {
                    let got = share_of(&without, e.region);
                    assert!((got - 100.0 / (n - 1) as f64).abs() < 0.2, "n={n}: region {} has {got:.2} %", e.region);
                }
                let back = moved(&without, &all);
                let fraction = back.len() as f64 / SELECTION_SLOTS as f64;
                assert!(fraction <= 1.0 / n as f64 + 0.002, "n={n}: adding back moved {fraction:.4}");
            }
        }
    }

    #[test]
    fn a_weight_change_moves_little_more_than_the_share_that_changes() {
        let before = selection(&entries(&[1, 1, 1]), &entries(&[1, 1, 1]));
        let after = selection(&entries(&[2, 1, 1]), &entries(&[2, 1, 1]));
        // region1 goes from 1/3 to 1/2: at least 1/6 of the slots must move.
        let fraction = moved(&before, &after).len() as f64 / SELECTION_SLOTS as f64;
        assert!((1.0 / 6.0..1.0 / 6.0 + 0.05).contains(&fraction), "moved {fraction:.4}");
    }

    #[test]
    fn a_single_taker_gets_every_slot() {
        let sel = selection(&entries(&[1, 1, 1]), &entries(&[0, 5, 0]));
        assert!(sel.iter().all(|&r| r == 1));
    }
}
