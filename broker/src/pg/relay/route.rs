//! Where a client's statement runs: here, or relayed to the nodes holding what it reads,
//! decided from the statement's [`Description`].

use eddy_query::{Description, Engine, Parsed, Prepared, SessionChange, Writes};
use pgwire::error::PgWireError;

use super::Relay;
use crate::error::{sqlstate, to_pg, user_error};

/// Where a statement runs, and what running it there means here.
pub(super) struct Route {
    /// Nodes that can run it, in the order to try them (or the error to answer).
    pub(super) targets: Result<Vec<String>, PgWireError>,
    /// A cursor it declares or closes, a channel it listens to or stops.
    pub(super) change: Change,
    /// It only reads (a query, a subscription, a cursor's declaration, a Describe): if
    /// its node goes away before answering, it runs on the next one instead.
    pub(super) retry: bool,
}

/// What a relayed statement changes of the relay's state.
pub(super) enum Change {
    None,
    Declare(String),
    Close(String),
    Listen(String),
    Unlisten(String),
}

/// True for a statement that reads no object and changes nothing here but rows (a query
/// of no object, a blind write, transaction control): it runs wherever the statements
/// around it in a simple query are relayed.
fn runs_anywhere(d: &Description) -> bool {
    d.reads.is_empty()
        && matches!(d.writes, Writes::Nothing | Writes::Blind)
        && matches!(
            d.session,
            SessionChange::None | SessionChange::Begin | SessionChange::End
        )
}

impl Relay {
    /// Marks an `UNLISTEN *` about to run (not just described): the LISTENs relayed to
    /// other nodes end too before the client hears again ([`Relay::settle`]).
    pub(super) fn note_unlisten_all<'a>(
        &mut self,
        statements: impl IntoIterator<Item = &'a Description>,
    ) {
        self.unlisten_all |= !self.listens.is_empty()
            && statements
                .into_iter()
                .any(|d| d.session == SessionChange::UnlistenAll);
    }

    /// [`Relay::route`] for a prepared statement.
    pub(super) fn route_prepared(&self, engine: &Engine, prepared: &Prepared) -> Option<Route> {
        if !self.may_route(engine) {
            return None;
        }
        self.route(engine, &prepared.description)
    }

    /// False while this node holds every replica and no cursor or LISTEN lives
    /// elsewhere: then nothing is relayed, and statements need no look.
    pub(super) fn may_route(&self, engine: &Engine) -> bool {
        !self.cursors.is_empty() || !self.listens.is_empty() || engine.lacks_replicas()
    }

    /// Where the statement `described` goes; `None` to run it here. A blind write always
    /// runs here.
    pub(super) fn route(&self, engine: &Engine, described: &Description) -> Option<Route> {
        if described.is_blind_write() {
            return None;
        }
        let held = |name: &str| self.cursors.get(name).cloned();
        let (targets, change) = match &described.session {
            SessionChange::Fetch(cursor) => (Ok(vec![held(cursor)?]), Change::None),
            SessionChange::Close(Some(c)) => (Ok(vec![held(c)?]), Change::Close(c.clone())),
            SessionChange::Unlisten(channel) => {
                let at = self.listens.get(channel).cloned()?;
                (Ok(vec![at]), Change::Unlisten(channel.clone()))
            }
            // `UNLISTEN *` runs here (see `note_unlisten_all`).
            SessionChange::UnlistenAll => return None,
            session => {
                let targets = match engine.route(described) {
                    Ok(None) => return None,
                    Ok(Some(nodes)) => Ok(nodes),
                    Err(e) => Err(to_pg(e)),
                };
                let change = match session {
                    SessionChange::Declare(name) => Change::Declare(name.clone()),
                    SessionChange::Listen(channel) => Change::Listen(channel.clone()),
                    _ => Change::None,
                };
                (targets, change)
            }
        };
        Some(Route {
            targets,
            change,
            retry: described.may_retry(),
        })
    }

    /// Where a simple query of several statements goes: to the nodes that every one
    /// reading objects can run on, when some must run elsewhere and the others change
    /// nothing here (queries of no object, blind writes, transaction control). Else
    /// `None`, and the whole query runs here, as a single statement would.
    pub(super) fn route_all(&self, engine: &Engine, statements: &[Parsed]) -> Option<Route> {
        let mut common: Option<Vec<String>> = None;
        let mut retry = true;
        for Parsed { description, .. } in statements {
            retry &= description.may_retry();
            match self.route(engine, description) {
                Some(Route {
                    targets: Ok(targets),
                    change: Change::None,
                    ..
                }) => {
                    common = Some(match common {
                        None => targets,
                        Some(c) => c.into_iter().filter(|a| targets.contains(a)).collect(),
                    });
                }
                None if runs_anywhere(description) => {}
                _ => return None,
            }
        }
        let targets = common?;
        Some(Route {
            targets: if targets.is_empty() {
                Err(user_error(
                    sqlstate::FEATURE_NOT_SUPPORTED,
                    "the statements of this query read objects no one node holds replicas of \
                     all of: send them one at a time"
                        .to_owned(),
                ))
            } else {
                Ok(targets)
            },
            change: Change::None,
            retry,
        })
    }
}
