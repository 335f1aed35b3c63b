//! The partition nemeses' topologies, as pure functions of the member count
//! (and a random source): which unordered member pairs lose all traffic.
//!
//! Invariant: a [`Grudge`] only holds pairs `(a, b)` with `a < b < n`; the
//! network cuts both directed links of every pair it holds, so a partition
//! is always symmetric ("drop all traffic between A and B in both
//! directions").

use std::collections::BTreeSet;

use rand::seq::SliceRandom;
use rand::Rng;

/// The unordered pairs of members that cannot talk to each other.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Grudge {
    n: usize,
    cut: BTreeSet<(usize, usize)>,
}

impl Grudge {
    pub fn new(n: usize) -> Grudge {
        Grudge {
            n,
            cut: BTreeSet::new(),
        }
    }

    /// Cuts the pair `a`–`b` (ignored when `a == b` or out of range).
    pub fn cut(&mut self, a: usize, b: usize) {
        if a != b && a < self.n && b < self.n {
            self.cut.insert((a.min(b), a.max(b)));
        }
    }

    pub fn is_cut(&self, a: usize, b: usize) -> bool {
        self.cut.contains(&(a.min(b), a.max(b)))
    }

    pub fn pairs(&self) -> impl Iterator<Item = (usize, usize)> + '_ {
        self.cut.iter().copied()
    }

    pub fn is_empty(&self) -> bool {
        self.cut.is_empty()
    }

    /// The members `member` can still reach, itself included.
    pub fn visible_from(&self, member: usize) -> Vec<usize> {
        (0..self.n).filter(|&other| !self.is_cut(member, other)).collect()
    }

    /// "m1 sees m1 m2; m2 sees …", for the nemesis timeline.
    pub fn describe(&self, names: &[String]) -> String {
        let name = |i: usize| names.get(i).cloned().unwrap_or_else(|| format!("#{i}"));
        (0..self.n)
            .map(|member| {
                let seen: Vec<String> = self.visible_from(member).into_iter().map(name).collect();
                format!("{} sees {}", name(member), seen.join(" "))
            })
            .collect::<Vec<_>>()
            .join("; ")
    }
}

/// A random minority (`n / 2` members) cut off from the majority. Returns
/// the minority, the majority and the grudge.
pub fn halves(n: usize, rng: &mut impl Rng) -> (Vec<usize>, Vec<usize>, Grudge) {
    let mut members: Vec<usize> = (0..n).collect();
    members.shuffle(rng);
    let (minority, majority) = members.split_at(n / 2);
    let mut grudge = Grudge::new(n);
    for &a in minority {
        for &b in majority {
            grudge.cut(a, b);
        }
    }
    let (mut minority, mut majority) = (minority.to_vec(), majority.to_vec());
    minority.sort_unstable();
    majority.sort_unstable();
    (minority, majority, grudge)
}

/// `member` cut off from everyone else.
pub fn isolate(n: usize, member: usize) -> Grudge {
    let mut grudge = Grudge::new(n);
    for other in 0..n {
        grudge.cut(member, other);
    }
    grudge
}

/// Majorities ring: every member still sees a majority (itself included),
/// but no two members see the same majority, so they overlap. The members
/// are placed on a random ring; with 5 members each sees its two ring
/// neighbours, with 3 (where a ring is complete) the two ends of a random
/// path lose each other and only the middle member sees everyone.
pub fn ring(n: usize, rng: &mut impl Rng) -> (Vec<usize>, Grudge) {
    let mut order: Vec<usize> = (0..n).collect();
    order.shuffle(rng);
    let mut grudge = Grudge::new(n);
    if n <= 3 {
        if n == 3 {
            grudge.cut(order[0], order[2]);
        }
        return (order, grudge);
    }
    // Each member keeps the `reach` nearest members on either side, the
    // fewest that make a majority.
    let majority = n / 2 + 1;
    let reach = (majority - 1).div_ceil(2);
    for i in 0..n {
        for j in (i + 1)..n {
            let distance = (j - i).min(n - (j - i));
            if distance > reach {
                grudge.cut(order[i], order[j]);
            }
        }
    }
    (order, grudge)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    #[test]
    fn halves_cut_every_pair_across_and_none_within() {
        let mut rng = StdRng::seed_from_u64(7);
        for n in [3, 5] {
            let (minority, majority, grudge) = halves(n, &mut rng);
            assert_eq!(minority.len(), n / 2);
            assert_eq!(majority.len(), n - n / 2);
            for &a in &minority {
                for &b in &majority {
                    assert!(grudge.is_cut(a, b) && grudge.is_cut(b, a));
                }
            }
            for side in [&minority, &majority] {
                for &a in side.iter() {
                    for &b in side.iter() {
                        assert!(!grudge.is_cut(a, b));
                    }
                }
            }
        }
    }

    #[test]
    fn an_isolated_member_sees_only_itself() {
        let grudge = isolate(5, 2);
        assert_eq!(grudge.visible_from(2), vec![2]);
        assert_eq!(grudge.visible_from(0), vec![0, 1, 3, 4]);
    }

    #[test]
    fn ring_majorities_overlap_but_differ() {
        for seed in 0..20 {
            let mut rng = StdRng::seed_from_u64(seed);
            for n in [3, 5] {
                let (_, grudge) = ring(n, &mut rng);
                let majority = n / 2 + 1;
                let views: BTreeSet<Vec<usize>> = (0..n).map(|m| grudge.visible_from(m)).collect();
                for member in 0..n {
                    let seen = grudge.visible_from(member);
                    assert!(seen.len() >= majority, "n={n}: {member} sees {seen:?}");
                }
                assert!(!grudge.is_empty(), "n={n}: a ring must cut something");
                assert!(views.len() > 1, "n={n}: views must differ");
                if n == 5 {
                    assert!((0..n).all(|m| grudge.visible_from(m).len() == 3));
                }
            }
        }
    }
}
