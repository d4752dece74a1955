//! The chaos layer's pseudo-random numbers: SplitMix64, written out here.
//!
//! A fault pattern is replayed from a seed, so the numbers drawn from a seed
//! must never change: not when a dependency is upgraded, not on another
//! platform. A random-number crate is free to change its algorithms between
//! versions (and `rand`'s `StdRng` says it may), so the generator is these
//! few lines, pinned by the test below. SplitMix64 (Steele, Lea and Flood,
//! "Fast splittable pseudorandom number generators", 2014) is statistically
//! sound for drawing fault decisions, and its mixing function also derives
//! independent streams from (seed, connection, direction).

/// The golden-ratio increment of SplitMix64.
const GAMMA: u64 = 0x9e37_79b9_7f4a_7c15;

/// SplitMix64's output function: a bijective 64-bit mixer.
pub(crate) fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// One stream of pseudo-random numbers.
#[derive(Debug, Clone)]
pub(crate) struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    pub(crate) fn new(seed: u64) -> Self {
        Self { state: seed }
    }

    /// The stream for one direction of one connection: the seed mixed with
    /// each of `keys` in turn, so streams of different keys are unrelated.
    pub(crate) fn derived(seed: u64, keys: &[u64]) -> Self {
        let state = keys
            .iter()
            .fold(mix64(seed), |h, k| mix64(h ^ mix64(k.wrapping_add(GAMMA))));
        Self::new(state)
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(GAMMA);
        mix64(self.state)
    }

    /// A number uniformly drawn from `[0, 1)` (53 random bits).
    pub(crate) fn next_f64(&mut self) -> f64 {
        const SCALE: f64 = 1.0 / (1u64 << 53) as f64;
        (self.next_u64() >> 11) as f64 * SCALE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outputs_are_the_published_splitmix64_sequence() {
        // The reference outputs of SplitMix64 seeded with 1234567 (the test
        // vector of the C reference implementation). If this fails, every
        // recorded seed replays differently: do not change the generator.
        let mut r = SplitMix64::new(1_234_567);
        let got: Vec<u64> = (0..5).map(|_| r.next_u64()).collect();
        assert_eq!(
            got,
            [
                6_457_827_717_110_365_317,
                3_203_168_211_198_807_973,
                9_817_491_932_198_370_423,
                4_593_380_528_125_082_431,
                16_408_922_859_458_223_821,
            ]
        );
    }

    #[test]
    fn derived_streams_are_pinned_and_distinct() {
        let a = SplitMix64::derived(7, &[1, 0, 0, 1]).next_u64();
        let b = SplitMix64::derived(7, &[1, 0, 0, 2]).next_u64();
        let c = SplitMix64::derived(8, &[1, 0, 0, 1]).next_u64();
        assert!(a != b && a != c && b != c);
        // Pinned like the sequence above (computed independently, in
        // Python): the derivation is part of what a seed replays.
        assert_eq!(a, 11_529_865_583_318_685_658);
    }

    #[test]
    fn floats_are_in_the_unit_interval_and_spread() {
        let mut r = SplitMix64::new(42);
        let draws: Vec<f64> = (0..10_000).map(|_| r.next_f64()).collect();
        assert!(draws.iter().all(|x| (0.0..1.0).contains(x)));
        let below_half = draws.iter().filter(|x| **x < 0.5).count();
        assert!((4_500..5_500).contains(&below_half), "{below_half}");
    }
}
