//! The child's environment budget: which secrets fit into `execve` and which must go to a file
//! instead. Pure decisions only: nothing here touches the filesystem, logs, or sees a value
//! (only lengths).

/// Linux's limit on one argument or environment string, NUL included (`MAX_ARG_STRLEN`, 32
/// pages of 4 KiB).
pub const MAX_ARG_STRLEN: usize = 32 * 4096;
/// The kernel's floor for the total (`ARG_MAX`): never less than 32 pages.
pub const MIN_ARG_MAX: usize = 32 * 4096;
/// The kernel's ceiling for the total: three quarters of the 8 MiB `_STK_LIM`.
pub const MAX_ARG_TOTAL: usize = 6 * 1024 * 1024;
/// Room kept for the child's argv and the variables the init itself sets (HOME, USER, ...),
/// unknown when the secrets are placed: at most this, at most a quarter of the budget.
pub const ARGV_ALLOWANCE: usize = 128 * 1024;

/// The `execve` limits the plan is made against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Longest single `NAME=value\0` string.
    pub max_string: usize,
    /// Budget for all strings plus their pointers, argv allowance already taken off.
    pub total: usize,
}

impl Limits {
    /// The kernel's rule (`fs/exec.c`): a quarter of the stack limit, clamped to
    /// [`MIN_ARG_MAX`, `MAX_ARG_TOTAL`]; an unlimited stack gets the ceiling.
    pub fn from_stack_limit(stack: Option<u64>) -> Limits {
        let arg_max = match stack {
            None => MAX_ARG_TOTAL,
            Some(s) => usize::try_from(s / 4)
                .unwrap_or(usize::MAX)
                .clamp(MIN_ARG_MAX, MAX_ARG_TOTAL),
        };
        let allowance = ARGV_ALLOWANCE.min(arg_max / 4);
        Limits {
            max_string: MAX_ARG_STRLEN,
            total: arg_max - allowance,
        }
    }

    /// The limits of this process, from `getrlimit(RLIMIT_STACK)` (inherited by the child).
    pub fn current() -> Limits {
        use nix::sys::resource::{getrlimit, Resource, RLIM_INFINITY};
        let stack = match getrlimit(Resource::RLIMIT_STACK) {
            Ok((soft, _)) if soft == RLIM_INFINITY => None,
            Ok((soft, _)) => Some(soft),
            Err(_) => Some(8 * 1024 * 1024),
        };
        Limits::from_stack_limit(stack)
    }
}

/// What the environment costs the kernel: the string, its NUL and its pointer.
pub fn entry_cost(name_len: usize, value_len: usize) -> usize {
    name_len + 1 + value_len + 1 + std::mem::size_of::<usize>()
}

/// Cost of the `NAME_FILE=<path>` entry that replaces a spilled secret.
pub fn file_entry_cost(name_len: usize, path_len: usize) -> usize {
    entry_cost(name_len + "_FILE".len(), path_len)
}

/// Decides which secrets go to a file. `rest` is what the rest of the environment costs (the
/// inherited variables the secrets do not replace, by [`entry_cost`]); `secrets` holds each
/// secret's name and value lengths; `dir_len` the length of the spill directory path. Returns,
/// per secret in input order, whether it is spilled.
///
/// A secret whose string alone is longer than `max_string` is always spilled. Then, while the
/// total is over budget, the largest remaining value is spilled (equal lengths: the later one
/// in input order first; `prepare` passes them sorted by name, so the result is stable).
pub fn plan_spill(
    rest: usize,
    secrets: &[(usize, usize)],
    dir_len: usize,
    limits: Limits,
) -> Vec<bool> {
    let mut spilled: Vec<bool> = secrets
        .iter()
        .map(|&(n, v)| n + 1 + v + 1 > limits.max_string)
        .collect();
    let cost = |i: usize, spilled: bool| {
        let (n, v) = secrets[i];
        if spilled {
            file_entry_cost(n, dir_len + 1 + n)
        } else {
            entry_cost(n, v)
        }
    };
    let mut total: usize = rest
        + (0..secrets.len())
            .map(|i| cost(i, spilled[i]))
            .sum::<usize>();
    let mut order: Vec<usize> = (0..secrets.len()).collect();
    // Largest value first; equal lengths: the later index first.
    order.sort_by(|&a, &b| secrets[b].1.cmp(&secrets[a].1).then(b.cmp(&a)));
    for i in order {
        if total <= limits.total {
            break;
        }
        if spilled[i] {
            continue;
        }
        let before = cost(i, false);
        let after = cost(i, true);
        if after >= before {
            continue;
        }
        spilled[i] = true;
        total = total - before + after;
    }
    spilled
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROOMY: Limits = Limits {
        max_string: MAX_ARG_STRLEN,
        total: 2 * 1024 * 1024,
    };

    #[test]
    fn limits_follow_the_kernel_rule() {
        let eight_mib = Limits::from_stack_limit(Some(8 * 1024 * 1024));
        assert_eq!(eight_mib.max_string, 131072);
        assert_eq!(eight_mib.total, 2 * 1024 * 1024 - ARGV_ALLOWANCE);
        let unlimited = Limits::from_stack_limit(None);
        assert_eq!(unlimited.total, MAX_ARG_TOTAL - ARGV_ALLOWANCE);
        let huge = Limits::from_stack_limit(Some(u64::MAX));
        assert_eq!(huge.total, MAX_ARG_TOTAL - ARGV_ALLOWANCE);
        let tiny = Limits::from_stack_limit(Some(64 * 1024));
        assert_eq!(tiny.total, MIN_ARG_MAX - MIN_ARG_MAX / 4);
        let zero = Limits::from_stack_limit(Some(0));
        assert_eq!(zero, tiny);
        assert!(Limits::current().total >= MIN_ARG_MAX / 2);
    }

    #[test]
    fn small_secrets_stay_in_the_environment() {
        let secrets = vec![(5, 10), (3, 48 * 1024), (8, 0)];
        assert_eq!(plan_spill(4000, &secrets, 30, ROOMY), vec![false; 3]);
        assert!(plan_spill(0, &[], 30, ROOMY).is_empty());
    }

    #[test]
    fn a_single_string_over_max_arg_strlen_is_spilled() {
        // NAME=value\0 with name 4: exactly MAX_ARG_STRLEN fits, one byte more does not.
        let fits = MAX_ARG_STRLEN - 4 - 2;
        let secrets = vec![(4, fits), (4, fits + 1), (4, 200 * 1024), (4, 1)];
        assert_eq!(
            plan_spill(0, &secrets, 30, ROOMY),
            vec![false, true, true, false]
        );
    }

    #[test]
    fn over_budget_spills_the_largest_until_it_fits() {
        let limits = Limits {
            max_string: MAX_ARG_STRLEN,
            total: 100_000,
        };
        // 40k + 30k + 20k + 10k + rest 10k = 110k (+ overhead): spilling the 40k one is enough.
        let secrets = vec![(1, 20_000), (1, 40_000), (1, 10_000), (1, 30_000)];
        assert_eq!(
            plan_spill(10_000, &secrets, 30, limits),
            vec![false, true, false, false]
        );
        // With 50k already used, the 40k and the 30k go.
        assert_eq!(
            plan_spill(50_000, &secrets, 30, limits),
            vec![false, true, false, true]
        );
        // The rest alone is over budget: everything goes, and that is all the plan can do.
        assert_eq!(plan_spill(200_000, &secrets, 30, limits), vec![true; 4]);
    }

    #[test]
    fn ties_are_decided_by_position_and_tiny_values_are_never_made_bigger() {
        let limits = Limits {
            max_string: MAX_ARG_STRLEN,
            total: 25_000,
        };
        let secrets = vec![(1, 10_000), (1, 10_000), (1, 10_000)];
        // Over by ~5k: one goes, the last of the equals.
        assert_eq!(
            plan_spill(0, &secrets, 30, limits),
            vec![false, false, true]
        );
        // A value shorter than its NAME_FILE entry is never spilled: it would not help.
        let secrets = vec![(1, 2), (1, 3)];
        let tight = Limits {
            max_string: MAX_ARG_STRLEN,
            total: 1,
        };
        assert_eq!(plan_spill(0, &secrets, 30, tight), vec![false, false]);
    }

    #[test]
    fn the_plan_fits_whenever_spilling_can_make_it_fit() {
        // Exhaustive over small shapes: after the plan, either the total fits or every secret
        // that would shrink by spilling is spilled.
        let limits = Limits {
            max_string: 1000,
            total: 3000,
        };
        let sizes = [0usize, 50, 400, 990, 1200];
        for a in sizes {
            for b in sizes {
                for c in sizes {
                    for rest in [0usize, 1000, 4000] {
                        let secrets = vec![(2, a), (2, b), (2, c)];
                        let plan = plan_spill(rest, &secrets, 10, limits);
                        let total: usize = rest
                            + secrets
                                .iter()
                                .zip(&plan)
                                .map(|(&(n, v), &s)| {
                                    if s {
                                        file_entry_cost(n, 10 + 1 + n)
                                    } else {
                                        entry_cost(n, v)
                                    }
                                })
                                .sum::<usize>();
                        for (&(n, v), &s) in secrets.iter().zip(&plan) {
                            if n + v + 2 > limits.max_string {
                                assert!(s, "{secrets:?} {rest}");
                            }
                        }
                        let all_shrinkable_spilled =
                            secrets.iter().zip(&plan).all(|(&(n, v), &s)| {
                                s || file_entry_cost(n, 10 + 1 + n) >= entry_cost(n, v)
                            });
                        assert!(
                            total <= limits.total || all_shrinkable_spilled,
                            "{secrets:?} rest {rest}: {plan:?} total {total}"
                        );
                    }
                }
            }
        }
    }
}
