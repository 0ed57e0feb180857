//! The domain-registration order written by hand against the core traits, without the
//! derive: the same states, table, guards, invariant and effects as [`crate::registrar`].
//!
//! It is the baseline of the dispatch benchmark (a hand-written nested `match`) and the other
//! half of the mirrored tests, which check that the derived machine behaves exactly like it.

use fsm_core::{
    Effects, Event, EventId, Policy, Reason, Refusal, Rejection, StateId, StateMachine, StateMeta,
    Table, Transition, TransitionMeta,
};

use crate::registrar::{is_valid_domain, OrderCmd, OrderEffect, MIN_PRICE_CENTS};

/// The order, hand-written. Variants mirror [`crate::registrar::Order`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[allow(missing_docs)] // the fields mirror `registrar::Order`, documented there
pub enum HandOrder {
    Draft,
    Submitted { domain: String },
    Paid { domain: String, cents: u64 },
    Registered { domain: String },
    Failed { domain: String, reason: String },
    Cancelled,
}

const DRAFT: u16 = 0;
const SUBMITTED: u16 = 1;
const PAID: u16 = 2;
const REGISTERED: u16 = 3;
const FAILED: u16 = 4;
const CANCELLED: u16 = 5;

// Event ids: declaration order of `OrderCmd`.
const SUBMIT: u16 = 0;
const PAY: u16 = 1;
const CONFIRM: u16 = 2;
const REJECT: u16 = 3;
const RETRY: u16 = 4;
const CANCEL: u16 = 5;

/// The table, written out by hand.
pub const TABLE: Table = Table::new(
    "Order",
    &[
        StateMeta::new("Draft"),
        StateMeta::new("Submitted")
            .validated()
            .policies(&[(EventId::new(CONFIRM), Policy::Defer)]),
        StateMeta::new("Paid"),
        StateMeta::new("Registered").terminal(),
        StateMeta::new("Failed"),
        StateMeta::new("Cancelled").terminal(),
    ],
    &["Submit", "Pay", "Confirm", "Reject", "Retry", "Cancel"],
    &[
        TransitionMeta::new(DRAFT, SUBMIT, SUBMITTED),
        TransitionMeta::new(DRAFT, CANCEL, CANCELLED),
        TransitionMeta::new(SUBMITTED, PAY, PAID),
        TransitionMeta::new(SUBMITTED, CANCEL, CANCELLED),
        TransitionMeta::new(PAID, CONFIRM, REGISTERED),
        TransitionMeta::new(PAID, REJECT, FAILED),
        TransitionMeta::new(FAILED, RETRY, SUBMITTED),
        TransitionMeta::new(FAILED, CANCEL, CANCELLED),
    ],
    DRAFT,
);

fn rejection(from: u16, event: EventId, reason: Reason) -> Rejection {
    Rejection::new(&TABLE, StateId::new(from), event, reason)
}

fn submitted(from: u16, event: EventId, domain: String) -> Result<HandOrder, Rejection> {
    if is_valid_domain(&domain) {
        Ok(HandOrder::Submitted { domain })
    } else {
        Err(rejection(
            from,
            event,
            Reason::Invalid {
                target: StateId::new(SUBMITTED),
                refusal: Refusal::new("not a valid domain name"),
            },
        ))
    }
}

impl StateMachine for HandOrder {
    type Event = OrderCmd;
    type Effect = OrderEffect;
    const TABLE: &'static Table = &TABLE;

    fn state(&self) -> StateId {
        StateId::new(match self {
            HandOrder::Draft => DRAFT,
            HandOrder::Submitted { .. } => SUBMITTED,
            HandOrder::Paid { .. } => PAID,
            HandOrder::Registered { .. } => REGISTERED,
            HandOrder::Failed { .. } => FAILED,
            HandOrder::Cancelled => CANCELLED,
        })
    }

    fn next(
        &self,
        event: OrderCmd,
        effects: &mut Effects<OrderEffect>,
    ) -> Result<(Self, Transition), Rejection> {
        use HandOrder as O;
        use OrderCmd as C;
        let from = self.state().index() as u16;
        let id = event.id();
        let next = match self {
            O::Draft => match event {
                C::Submit { domain } => submitted(from, id, domain)?,
                C::Cancel => O::Cancelled,
                _ => return Err(rejection(from, id, Reason::NoTransition)),
            },
            O::Submitted { domain } => match event {
                C::Pay { cents, .. } => {
                    if cents < MIN_PRICE_CENTS {
                        return Err(rejection(
                            from,
                            id,
                            Reason::Refused(Refusal::new("payment below the 10.00 minimum")),
                        ));
                    }
                    effects.push(OrderEffect::Register {
                        domain: domain.clone(),
                        cents,
                    });
                    O::Paid {
                        domain: domain.clone(),
                        cents,
                    }
                }
                C::Cancel => O::Cancelled,
                _ => return Err(rejection(from, id, Reason::NoTransition)),
            },
            O::Paid { domain, cents } => match event {
                C::Confirm => {
                    effects.push(OrderEffect::NotifyRegistered {
                        domain: domain.clone(),
                    });
                    O::Registered {
                        domain: domain.clone(),
                    }
                }
                C::Reject { reason } => {
                    effects.push(OrderEffect::Refund { cents: *cents });
                    O::Failed {
                        domain: domain.clone(),
                        reason,
                    }
                }
                _ => return Err(rejection(from, id, Reason::NoTransition)),
            },
            O::Failed { domain, .. } => match event {
                C::Retry => submitted(from, id, domain.clone())?,
                C::Cancel => O::Cancelled,
                _ => return Err(rejection(from, id, Reason::NoTransition)),
            },
            O::Registered { .. } | O::Cancelled => {
                return Err(rejection(from, id, Reason::Terminal))
            }
        };
        let to = next.state();
        Ok((next, Transition::new(&TABLE, StateId::new(from), id, to)))
    }

    fn validate(&self) -> Result<(), fsm_core::InvalidState> {
        match self {
            HandOrder::Submitted { domain } if !is_valid_domain(domain) => {
                Err(fsm_core::InvalidState::new(
                    &TABLE,
                    StateId::new(SUBMITTED),
                    Refusal::new("not a valid domain name"),
                ))
            }
            _ => Ok(()),
        }
    }
}
