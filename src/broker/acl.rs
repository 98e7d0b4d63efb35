//! Access rules: which secret names a (user, repository) sandbox gets, and from which level.
//! Pure functions over names and grants; nothing here touches the store, a value or a socket.

use serde::{Deserialize, Serialize};

/// The level a served secret comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    /// A user secret granted to the sandbox's repository.
    User,
    /// A repository secret of the sandbox's repository.
    Repository,
}

impl Level {
    /// The word used in CLI output and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Level::User => "user",
            Level::Repository => "repository",
        }
    }
}

/// A user secret as the rules see it: its name and the repositories that may read it.
#[derive(Clone, Copy, Debug)]
pub struct UserGrant<'a> {
    pub name: &'a str,
    pub repos: &'a [String],
}

/// One name a sandbox gets.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanEntry {
    pub name: String,
    /// Where the served value comes from.
    pub from: Level,
    /// True when a repository secret of the same name exists and is hidden by the user secret.
    pub overrides_repository: bool,
}

/// Decides which names a sandbox of `repo` gets from the user's secrets (`user_secrets`, all of
/// one user) and the repository's secrets (`repo_secrets`, names of `repo`'s secrets). A user
/// secret is served when `repo` is in its list; every repository secret is served; on a name
/// clash the user secret wins. Names are compared as stored (already upper-case); `repo` and the
/// granted repositories are compared as stored (already lower-case). The result is sorted by name.
pub fn plan<'a>(
    repo: &str,
    user_secrets: impl IntoIterator<Item = UserGrant<'a>>,
    repo_secrets: impl IntoIterator<Item = &'a str>,
) -> Vec<PlanEntry> {
    let mut out: std::collections::BTreeMap<&str, PlanEntry> = std::collections::BTreeMap::new();
    for name in repo_secrets {
        out.insert(
            name,
            PlanEntry {
                name: name.to_owned(),
                from: Level::Repository,
                overrides_repository: false,
            },
        );
    }
    for grant in user_secrets {
        if !grant.repos.iter().any(|r| r == repo) {
            continue;
        }
        let clash = out
            .get(grant.name)
            .is_some_and(|e| e.from == Level::Repository || e.overrides_repository);
        out.insert(
            grant.name,
            PlanEntry {
                name: grant.name.to_owned(),
                from: Level::User,
                overrides_repository: clash,
            },
        );
    }
    out.into_values().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const NAMES: [&str; 2] = ["A", "B"];
    const REPOS: [&str; 2] = ["o/one", "o/two"];

    /// Every world over two names and two repositories: for each name, the user secret is absent
    /// or granted to a subset of the repositories, and each repository has the name or not.
    #[test]
    fn plan_matches_the_rules_in_every_small_world() {
        // Per name: user state 0 = absent, 1..=4 = present with grant mask (state - 1);
        // repo mask: bit i = repository i has a secret of this name.
        let per_name: Vec<(u8, u8)> = (0..5u8)
            .flat_map(|u| (0..4u8).map(move |r| (u, r)))
            .collect();
        let mut worlds = 0;
        for a in &per_name {
            for b in &per_name {
                let states = [*a, *b];
                let grants: Vec<(String, Vec<String>)> = NAMES
                    .iter()
                    .zip(states)
                    .filter(|(_, (u, _))| *u > 0)
                    .map(|(n, (u, _))| {
                        let mask = u - 1;
                        let repos = REPOS
                            .iter()
                            .enumerate()
                            .filter(|(i, _)| mask & (1 << i) != 0)
                            .map(|(_, r)| r.to_string())
                            .collect();
                        (n.to_string(), repos)
                    })
                    .collect();
                for (ri, repo) in REPOS.iter().enumerate() {
                    let repo_names: Vec<&str> = NAMES
                        .iter()
                        .zip(states)
                        .filter(|(_, (_, r))| r & (1 << ri) != 0)
                        .map(|(n, _)| *n)
                        .collect();
                    let got = plan(
                        repo,
                        grants.iter().map(|(n, r)| UserGrant { name: n, repos: r }),
                        repo_names.iter().copied(),
                    );
                    // The rule, written independently per name.
                    let mut want = Vec::new();
                    for (n, (u, r)) in NAMES.iter().zip(states) {
                        let user_granted = u > 0 && (u - 1) & (1 << ri) != 0;
                        let repo_has = r & (1 << ri) != 0;
                        if user_granted {
                            want.push(PlanEntry {
                                name: n.to_string(),
                                from: Level::User,
                                overrides_repository: repo_has,
                            });
                        } else if repo_has {
                            want.push(PlanEntry {
                                name: n.to_string(),
                                from: Level::Repository,
                                overrides_repository: false,
                            });
                        }
                    }
                    assert_eq!(got, want, "repo {repo} states {states:?}");
                    worlds += 1;
                }
            }
        }
        assert_eq!(worlds, 20 * 20 * 2);
    }

    #[test]
    fn a_user_secret_granted_elsewhere_does_not_hide_the_repository_secret() {
        let other = vec!["o/other".to_string()];
        let got = plan(
            "o/r",
            [UserGrant {
                name: "TOKEN",
                repos: &other,
            }],
            ["TOKEN"],
        );
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].from, Level::Repository);
    }

    #[test]
    fn result_is_sorted_and_order_of_input_does_not_matter() {
        let r = vec!["o/r".to_string()];
        let got = plan(
            "o/r",
            [
                UserGrant {
                    name: "Z",
                    repos: &r,
                },
                UserGrant {
                    name: "M",
                    repos: &r,
                },
            ],
            ["B", "M"],
        );
        let names: Vec<_> = got.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, ["B", "M", "Z"]);
        assert!(got[1].overrides_repository && got[1].from == Level::User);
    }
}
