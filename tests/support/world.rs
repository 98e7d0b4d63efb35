//! A daemon seeded with two users' secrets and three sandboxes, for the store tests that attack
//! rows and check every other sandbox is still served as before. Every value ends in `-VALUE` so
//! greps find them.

use std::path::PathBuf;

use super::daemon::{pairs, served, Daemon};

/// (daemon, mona on octo/a, mona on octo/b, hubot on octo/a); each sandbox is (id, directory).
pub struct World {
    pub d: Daemon,
    pub mona_a: (String, PathBuf),
    pub mona_b: (String, PathBuf),
    pub hubot_a: (String, PathBuf),
}

/// Every value [`seeded`] stores.
pub const VALUES: [&str; 5] = [
    "mona-token-VALUE",
    "mona-npm-VALUE",
    "hubot-deploy-VALUE",
    "a-db-VALUE",
    "b-db-VALUE",
];

/// Seeds the started daemon `d`.
pub fn seeded(d: Daemon) -> World {
    d.set_user("TOKEN", "mona", "octo/a,octo/b", "mona-token-VALUE");
    d.set_user("NPM", "mona", "octo/b", "mona-npm-VALUE");
    d.set_user("DEPLOY", "hubot", "octo/a", "hubot-deploy-VALUE");
    d.set_repo("DB", "octo/a", "a-db-VALUE");
    d.set_repo("DB", "octo/b", "b-db-VALUE");
    let mona_a = d.sandbox("mona", "octo/a");
    let mona_b = d.sandbox("mona", "octo/b");
    let hubot_a = d.sandbox("hubot", "octo/a");
    World {
        d,
        mona_a,
        mona_b,
        hubot_a,
    }
}

impl World {
    /// Every sandbox served what it was before the attack, except those in `broken`.
    #[track_caller]
    pub fn others_served(&self, broken: &[&str]) {
        let all = [
            (
                &self.mona_a,
                pairs(&[("DB", "a-db-VALUE"), ("TOKEN", "mona-token-VALUE")]),
            ),
            (
                &self.mona_b,
                pairs(&[
                    ("DB", "b-db-VALUE"),
                    ("NPM", "mona-npm-VALUE"),
                    ("TOKEN", "mona-token-VALUE"),
                ]),
            ),
            (
                &self.hubot_a,
                pairs(&[("DB", "a-db-VALUE"), ("DEPLOY", "hubot-deploy-VALUE")]),
            ),
        ];
        for ((id, dir), want) in all {
            if !broken.contains(&id.as_str()) {
                assert_eq!(served(dir), want, "sandbox {id}");
            }
        }
    }
}
