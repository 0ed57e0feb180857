//! A domain-registration order: the registrar's lifecycle of one order, from draft to a
//! registered (or cancelled) domain.

use fsm_core::{Effects, Event, Refusal, StateMachine};
use serde::{Deserialize, Serialize};

/// The smallest payment accepted for a registration, in cents.
pub const MIN_PRICE_CENTS: u64 = 1_000;

/// One order's lifecycle. The enum is the storable form (its snapshot); `order::*` are its
/// typed states.
#[derive(StateMachine, Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[fsm(event = OrderCmd, effect = OrderEffect)]
pub enum Order {
    /// Being filled in.
    #[fsm(initial, on(Submit => Submitted, with = submit), on(Cancel => Cancelled, plain))]
    Draft,
    /// Waiting for payment. A registrar's confirmation arriving early waits (is deferred).
    #[fsm(
        on(Pay => Paid, with = pay),
        on(Cancel => Cancelled, plain),
        defer(Confirm),
        validate = valid_submitted
    )]
    Submitted {
        /// The domain to register.
        domain: String,
    },
    /// Paid; the registrar is registering the domain.
    #[fsm(on(Confirm => Registered, with = confirm), on(Reject => Failed, with = reject))]
    Paid {
        /// The domain being registered.
        domain: String,
        /// What was paid.
        cents: u64,
    },
    /// Registered: the order is done.
    #[fsm(terminal)]
    Registered {
        /// The registered domain.
        domain: String,
    },
    /// The registrar refused; the order can be retried or cancelled.
    #[fsm(on(Retry => Submitted, with = retry), on(Cancel => Cancelled, plain))]
    Failed {
        /// The domain that failed.
        domain: String,
        /// The registrar's reason.
        reason: String,
    },
    /// Cancelled by the customer.
    #[fsm(terminal)]
    Cancelled,
}

/// Commands for an order, as they arrive from customers and the registrar.
#[derive(Event, Debug, Clone, PartialEq, Eq)]
pub enum OrderCmd {
    /// Submit the order for a domain.
    Submit {
        /// The domain to register.
        domain: String,
    },
    /// Pay for it.
    Pay {
        /// Amount in cents.
        cents: u64,
        /// The payment provider's token for the card: never printed.
        #[fsm(sensitive)]
        card_token: String,
    },
    /// The registrar registered the domain.
    Confirm,
    /// The registrar refused the domain.
    Reject {
        /// Why.
        reason: String,
    },
    /// Try again after a failure.
    Retry,
    /// The customer cancels.
    Cancel,
}

/// What an order asks the world to do once a transition is durable (kept in the order's
/// outbox until the registrar's answer is stored).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum OrderEffect {
    /// Charge the card and ask the registrar to register the domain.
    Register {
        /// The domain.
        domain: String,
        /// Amount charged.
        cents: u64,
    },
    /// Tell the customer the domain is theirs.
    NotifyRegistered {
        /// The domain.
        domain: String,
    },
    /// Give the money back.
    Refund {
        /// Amount to refund.
        cents: u64,
    },
}

/// A syntactically valid domain name: labels of letters, digits and inner hyphens, separated
/// by dots, at least two labels, at most 253 characters.
pub fn is_valid_domain(domain: &str) -> bool {
    domain.len() <= 253
        && domain.split('.').count() >= 2
        && domain.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        })
}

/// Invariant of `Submitted`: the domain is valid.
pub fn valid_submitted(s: order::SubmittedRef<'_>) -> Result<(), Refusal> {
    if is_valid_domain(s.domain) {
        Ok(())
    } else {
        Err(Refusal::new("not a valid domain name"))
    }
}

type Fx = Effects<OrderEffect>;

// The transitions' functions, named in the table (`with = ..`): the state's view, the event's
// payload and the effects in; the new state, or a refusal, out.

fn submit(_: order::Draft, ev: order_cmd::Submit, _: &mut Fx) -> Result<order::Submitted, Refusal> {
    Ok(order::Submitted { domain: ev.domain })
}

fn pay(
    s: order::SubmittedRef<'_>,
    ev: order_cmd::Pay,
    fx: &mut Fx,
) -> Result<order::Paid, Refusal> {
    if ev.cents < MIN_PRICE_CENTS {
        return Err(Refusal::new("payment below the 10.00 minimum"));
    }
    let domain = s.domain.clone();
    fx.push(OrderEffect::Register {
        domain: domain.clone(),
        cents: ev.cents,
    });
    Ok(order::Paid {
        domain,
        cents: ev.cents,
    })
}

fn confirm(
    s: order::PaidRef<'_>,
    _: order_cmd::Confirm,
    fx: &mut Fx,
) -> Result<order::Registered, Refusal> {
    let domain = s.domain.clone();
    fx.push(OrderEffect::NotifyRegistered {
        domain: domain.clone(),
    });
    Ok(order::Registered { domain })
}

fn reject(
    s: order::PaidRef<'_>,
    ev: order_cmd::Reject,
    fx: &mut Fx,
) -> Result<order::Failed, Refusal> {
    fx.push(OrderEffect::Refund { cents: *s.cents });
    Ok(order::Failed {
        domain: s.domain.clone(),
        reason: ev.reason,
    })
}

fn retry(
    s: order::FailedRef<'_>,
    _: order_cmd::Retry,
    _: &mut Fx,
) -> Result<order::Submitted, Refusal> {
    Ok(order::Submitted {
        domain: s.domain.clone(),
    })
}
