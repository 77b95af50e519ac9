//! `org.varlink.service`: GetInfo, and GetInterfaceDescription, whose
//! replies are the interface files themselves.

use serde::Deserialize;
use serde_json::Value;
use zlink::varlink_service;

use super::{
    api,
    wire::{Empty, WireError, parse},
};

/// `org.varlink.service`'s own definition, for GetInterfaceDescription.
const VARLINK_SERVICE: &str = "\
# The Varlink Service Interface is provided by every varlink service. It
# describes the service and the interfaces it implements.
interface org.varlink.service

# Get a list of all the interfaces a service provides and information
# about the implementation.
method GetInfo() -> (
  vendor: string,
  product: string,
  version: string,
  url: string,
  interfaces: []string
)

# Get the description of an interface that is implemented by this service.
method GetInterfaceDescription(interface: string) -> (description: string)

# The requested interface was not found.
error InterfaceNotFound (interface: string)

# The requested method was not found
error MethodNotFound (method: string)

# The interface defines the requested method, but the service does not
# implement it.
error MethodNotImplemented (method: string)

# One of the passed parameters is invalid.
error InvalidParameter (parameter: string)

# Client is denied access
error PermissionDenied ()

# Method is expected to be called with 'more' set to true, but wasn't
error ExpectedMore ()
";

/// Answers `org.varlink.service` for the varlink socket, whose replies are
/// the interface file.
pub(super) fn varlink_call(member: &str, parameters: &Option<Value>) -> Result<Value, WireError> {
    service_call(member, parameters, &[(api::INTERFACE, api::DESCRIPTION)])
}

/// Answers `org.varlink.service` for a socket that serves `interfaces`,
/// each by its name and its interface file's text.
pub fn service_call(
    member: &str,
    parameters: &Option<Value>,
    interfaces: &[(&str, &str)],
) -> Result<Value, WireError> {
    match member {
        "GetInfo" => {
            let _: Empty = parse(parameters)?;
            Ok(serde_json::json!({
                "vendor": "guestlogd",
                "product": "guestlogd",
                "version": env!("CARGO_PKG_VERSION"),
                "url": "",
                "interfaces": interfaces
                    .iter()
                    .map(|(name, _)| *name)
                    .chain(["org.varlink.service"])
                    .collect::<Vec<_>>(),
            }))
        }
        "GetInterfaceDescription" => {
            let p: DescriptionInput = parse(parameters)?;
            let known = interfaces.iter().find(|(name, _)| *name == p.interface);
            let description = match (known, p.interface.as_str()) {
                (Some((_, text)), _) => *text,
                (None, "org.varlink.service") => VARLINK_SERVICE,
                _ => {
                    return Err(WireError::Varlink(
                        varlink_service::Error::InterfaceNotFound {
                            interface: p.interface.into(),
                        },
                    ));
                }
            };
            Ok(serde_json::json!({ "description": description }))
        }
        _ => Err(WireError::Varlink(varlink_service::Error::MethodNotFound {
            method: format!("org.varlink.service.{member}").into(),
        })),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DescriptionInput {
    interface: String,
}
