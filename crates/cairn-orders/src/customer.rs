//! The Customer aggregate: who orders, and where to write to them.

use cairn_cqrs::{Aggregate, DomainError, Existence};
use serde::{Deserialize, Serialize};

use crate::rules::check_text;

/// `CustomerRegistered`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CustomerRegistered {
    /// Name.
    pub name: String,
    /// E-mail address.
    pub email: String,
}

/// `CustomerEmailChanged`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CustomerEmailChanged {
    /// The new address.
    pub email: String,
    /// The old one.
    pub previous_email: String,
}

/// Every event of a customer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CustomerEvent {
    /// See [`CustomerRegistered`].
    CustomerRegistered(CustomerRegistered),
    /// See [`CustomerEmailChanged`].
    CustomerEmailChanged(CustomerEmailChanged),
}

cairn_cqrs::domain_events!(CustomerEvent { CustomerRegistered, CustomerEmailChanged });

/// What can be asked of a customer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CustomerCommand {
    /// Register.
    Register {
        /// Name.
        name: String,
        /// E-mail.
        email: String,
    },
    /// Change the e-mail address (no event when it is the same).
    ChangeEmail {
        /// The new address.
        email: String,
    },
}

/// The state of a customer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Customer {
    /// Name.
    pub name: String,
    /// E-mail.
    pub email: String,
}

fn check_email(email: &str) -> Result<(), DomainError> {
    let valid = email.len() <= 254
        && !email.chars().any(char::is_whitespace)
        && email.split_once('@').is_some_and(|(user, domain)| {
            !user.is_empty() && !domain.is_empty() && !domain.contains('@')
        });
    if valid {
        Ok(())
    } else {
        Err(DomainError::rule(format!("{email:?} is not an e-mail address")))
    }
}

impl Aggregate for Customer {
    const TYPE: &'static str = "Customer";
    type Event = CustomerEvent;
    type Command = CustomerCommand;

    fn apply(&mut self, event: &CustomerEvent) {
        match event {
            CustomerEvent::CustomerRegistered(e) => {
                self.name.clone_from(&e.name);
                self.email.clone_from(&e.email);
            }
            CustomerEvent::CustomerEmailChanged(e) => self.email.clone_from(&e.email),
        }
    }

    fn handle(&self, command: &CustomerCommand) -> Result<Vec<CustomerEvent>, DomainError> {
        match command {
            CustomerCommand::Register { name, email } => {
                check_text("name", name)?;
                check_email(email)?;
                Ok(vec![CustomerEvent::CustomerRegistered(CustomerRegistered {
                    name: name.clone(),
                    email: email.clone(),
                })])
            }
            CustomerCommand::ChangeEmail { email } => {
                check_email(email)?;
                if *email == self.email {
                    return Ok(vec![]);
                }
                Ok(vec![CustomerEvent::CustomerEmailChanged(CustomerEmailChanged {
                    email: email.clone(),
                    previous_email: self.email.clone(),
                })])
            }
        }
    }

    cairn_cqrs::serde_snapshots!();

    fn existence(command: &CustomerCommand) -> Existence {
        match command {
            CustomerCommand::Register { .. } => Existence::MustNotExist,
            CustomerCommand::ChangeEmail { .. } => Existence::MustExist,
        }
    }
}
