//! The client's network calls (an `impl` block of
//! [`AgentClient`](crate::client::AgentClient)): configuring the guest NIC and
//! its routes from what CNI gave the Pod.

use crate::client::{AgentClient, ClientError};
use crate::pb;

/// The most routes a reply may list.
const MAX_ROUTES: usize = 1024;

impl AgentClient {
    /// UpdateInterface: gives the guest NIC with `interface.mac` the name,
    /// addresses and MTU in `interface`, and sets it up. Returns the
    /// interface as the guest has it.
    pub async fn update_interface(
        &self,
        interface: pb::Interface,
    ) -> Result<pb::Interface, ClientError> {
        const M: &str = "UpdateInterface";
        let mut c = self.inner.clone();
        let t = Some(self.timeout);
        let request = pb::UpdateInterfaceRequest {
            interface: Some(interface),
        };
        let reply = Self::call(M, t, c.update_interface(self.request(request, t))).await?;
        if reply.mac.len() > 17 || reply.addresses.len() > MAX_ROUTES {
            return Err(ClientError::invalid(M, "oversized interface"));
        }
        Ok(reply)
    }

    /// UpdateRoutes: replaces the guest's routes with `routes`; returns the
    /// routes as installed.
    pub async fn update_routes(
        &self,
        routes: Vec<pb::Route>,
    ) -> Result<Vec<pb::Route>, ClientError> {
        const M: &str = "UpdateRoutes";
        let mut c = self.inner.clone();
        let t = Some(self.timeout);
        let request = pb::UpdateRoutesRequest { routes };
        let reply = Self::call(M, t, c.update_routes(self.request(request, t))).await?;
        if reply.routes.len() > MAX_ROUTES {
            return Err(ClientError::invalid(M, "too many routes"));
        }
        Ok(reply.routes)
    }
}
