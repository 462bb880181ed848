//! Where a client's statement runs: here, or relayed to the nodes holding what it reads,
//! decided from the statement's [`Description`].

use eddy_query::{Description, Engine, Parsed, Prepared, SessionChange, Writes};
use pgwire::api::ClientInfo;
use pgwire::error::PgWireError;
use pgwire::messages::response::TransactionStatus;

use super::Relay;
use crate::error::{sqlstate, to_pg, user_error};
use crate::router::Strategy;
use crate::routing::{Pin, Purpose, Routing, Target};

/// What of the client's session routing weighs.
#[derive(Clone, Copy)]
pub(crate) struct Session {
    /// Its `routing` setting.
    pub(super) strategy: Strategy,
    /// Why it must stay here, if it must.
    pub(super) pin: Option<Pin>,
    /// Why it asks: to run the statement, or to describe it.
    pub(super) purpose: Purpose,
}

impl Session {
    /// The session of the connection `socket`.
    pub(super) fn of<S: ClientInfo>(routing: &Routing, socket: &S) -> Session {
        let setting = crate::pg::session_of(socket).lock().get("routing");
        Session {
            strategy: routing.strategy(setting.as_deref()),
            pin: (socket.transaction_status() != TransactionStatus::Idle).then_some(Pin::Block),
            purpose: Purpose::Run,
        }
    }
}

/// Where a statement runs, and what running it there means here.
pub(super) struct Route {
    /// Nodes that can run it, in the order to try them (or the error to answer).
    pub(super) targets: Result<Vec<String>, PgWireError>,
    /// A cursor it declares or closes, a channel it listens to or stops.
    pub(super) change: Change,
    /// It only reads (a query, a subscription, a cursor's declaration, a Describe): if
    /// its node goes away before answering, it runs on the next one instead.
    pub(super) retry: bool,
    /// Its answer's latency tells how fast that node is (not a stream, a cursor's wait,
    /// or a session change).
    pub(super) measure: bool,
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
    pub(super) fn route_prepared(
        &self,
        engine: &Engine,
        prepared: &Prepared,
        session: &Session,
    ) -> Option<Route> {
        if !self.may_route(engine, session) {
            return None;
        }
        self.route(engine, &prepared.description, session)
    }

    /// False while nothing could go elsewhere (no other node, or the `local` strategy on
    /// a node holding every replica) and no cursor or LISTEN lives elsewhere: then
    /// statements need no look.
    pub(super) fn may_route(&self, engine: &Engine, session: &Session) -> bool {
        !self.cursors.is_empty()
            || !self.listens.is_empty()
            || engine.lacks_replicas()
            || (session.strategy != Strategy::Local && self.routing.has_peers())
    }

    /// Where the statement `described` goes; `None` to run it here. A blind write always
    /// runs here.
    pub(super) fn route(
        &self,
        engine: &Engine,
        described: &Description,
        session: &Session,
    ) -> Option<Route> {
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
            change => {
                let targets = match engine.route(described) {
                    Ok(holders) => {
                        let decision = self.routing.decide(
                            described,
                            holders,
                            session.strategy,
                            session.pin,
                            session.purpose,
                        );
                        match decision.target {
                            Target::Here => return None,
                            Target::Nodes(nodes) if nodes.is_empty() => Err(user_error(
                                sqlstate::SERIALIZATION_FAILURE,
                                format!("{}; retry", decision.reason),
                            )),
                            Target::Nodes(nodes) => Ok(nodes),
                        }
                    }
                    Err(e) => Err(to_pg(e)),
                };
                let change = match change {
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
            measure: described.session == SessionChange::None,
        })
    }

    /// Where a simple query of several statements goes: to the nodes that every one
    /// reading objects can run on, when some must run elsewhere and the others change
    /// nothing here (queries of no object, blind writes, transaction control). Else
    /// `None`, and the whole query runs here, as a single statement would.
    pub(super) fn route_all(
        &self,
        engine: &Engine,
        statements: &[Parsed],
        session: &Session,
    ) -> Option<Route> {
        let mut common: Option<Vec<String>> = None;
        let mut retry = true;
        for Parsed { description, .. } in statements {
            retry &= description.may_retry();
            match self.route(engine, description, session) {
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
            measure: false,
        })
    }
}
