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

/// The first step of `partition-leader-pair`: the leader and one follower
/// cut off together from everyone else, so on 5 members what the leader
/// appends now reaches only the follower (2 of 5) and cannot commit while
/// the cut lasts (on 3 members the pair is a majority and still commits).
/// Returns the pair (sorted), the rest and the grudge.
pub fn leader_pair(n: usize, leader: usize, follower: usize) -> (Vec<usize>, Vec<usize>, Grudge) {
    let mut pair = vec![leader, follower];
    pair.sort_unstable();
    pair.dedup();
    let rest: Vec<usize> = (0..n).filter(|m| !pair.contains(m)).collect();
    let mut grudge = Grudge::new(n);
    for &a in &pair {
        for &b in &rest {
            grudge.cut(a, b);
        }
    }
    (pair, rest, grudge)
}

/// The second step of `partition-leader-pair`: a NEW majority around
/// `follower` (which holds the old leader's uncommitted entries) that
/// leaves out the old `leader` and, when the rest is still a majority
/// without it (5 members), `new_leader` (the member the others elected
/// meanwhile). The left-out members stay connected to each other, so a new
/// leader can still reach the old one and truncate its uncommitted entries.
/// Returns the majority, the left-out minority (both sorted) and the grudge.
pub fn stale_majority(
    n: usize,
    leader: usize,
    follower: usize,
    new_leader: Option<usize>,
) -> (Vec<usize>, Vec<usize>, Grudge) {
    let majority_size = n / 2 + 1;
    let mut minority = vec![leader];
    if let Some(new) = new_leader {
        if new != leader && new != follower && new < n && n - 2 >= majority_size {
            minority.push(new);
        }
    }
    minority.sort_unstable();
    let majority: Vec<usize> = (0..n).filter(|m| !minority.contains(m)).collect();
    let mut grudge = Grudge::new(n);
    for &a in &minority {
        for &b in &majority {
            grudge.cut(a, b);
        }
    }
    (majority, minority, grudge)
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

    #[test]
    fn leader_pair_cuts_the_pair_from_the_rest() {
        for (n, leader, follower) in [(5, 0, 3), (5, 4, 1), (3, 2, 0)] {
            let (pair, rest, grudge) = leader_pair(n, leader, follower);
            assert_eq!(pair.len(), 2);
            assert!(pair.contains(&leader) && pair.contains(&follower));
            assert_eq!(rest.len(), n - 2);
            // The pair sees only itself; the rest only the rest.
            assert_eq!(grudge.visible_from(leader), pair);
            assert_eq!(grudge.visible_from(follower), pair);
            for &r in &rest {
                assert_eq!(grudge.visible_from(r), rest);
            }
            // On 5 members the leader's side is a minority: nothing it
            // appends commits. On 3 the pair is a majority.
            assert_eq!(pair.len() < n / 2 + 1, n == 5);
        }
    }

    #[test]
    fn stale_majority_holds_the_follower_and_excludes_both_leaders() {
        for leader in 0..5 {
            for follower in (0..5).filter(|&f| f != leader) {
                let (_, rest, _) = leader_pair(5, leader, follower);
                for &new in &rest {
                    let (majority, minority, grudge) = stale_majority(5, leader, follower, Some(new));
                    assert!(majority.contains(&follower), "{majority:?}");
                    assert!(!majority.contains(&new) && !majority.contains(&leader));
                    assert_eq!(majority.len(), 3, "a majority of 5");
                    assert_eq!(minority, {
                        let mut m = vec![leader, new];
                        m.sort_unstable();
                        m
                    });
                    for &m in &majority {
                        assert_eq!(grudge.visible_from(m), majority);
                    }
                    // The new leader can still reach the old one.
                    assert!(!grudge.is_cut(leader, new));
                }
            }
        }
    }

    #[test]
    fn stale_majority_on_3_leaves_out_only_the_old_leader() {
        let (majority, minority, grudge) = stale_majority(3, 1, 2, Some(0));
        assert_eq!(majority, vec![0, 2], "the follower and the third");
        assert_eq!(minority, vec![1]);
        assert_eq!(grudge.visible_from(1), vec![1]);
        let (majority, _, _) = stale_majority(3, 1, 2, None);
        assert_eq!(majority, vec![0, 2]);
        // A new leader equal to the follower is never cut off.
        let (majority, minority, _) = stale_majority(5, 0, 1, Some(1));
        assert!(majority.contains(&1) && minority == vec![0]);
    }
}
