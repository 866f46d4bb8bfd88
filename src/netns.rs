//! The little netlink plexus needs inside a pod's network namespace: list links (to refuse an
//! interface name already taken, and to know later what an ADD added), move the default route
//! (NPWG `default-route`), clear away what an ADD that was cut short left behind; and whether a
//! namespace is plexus's own (`CNI_NETNS_OVERRIDE`). The engine reaches them through
//! [`NetnsOps`], so its unit tests run without root.
//!
//! A netlink socket belongs to the namespace it was created in. We create it on a short-lived
//! thread that has entered the pod netns (setns affects only the calling thread), then use it from
//! anywhere; no thread of ours ever switches back and forth.

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL,
    NLM_F_REQUEST,
};
use netlink_packet_route::link::{LinkAttribute, LinkInfo, LinkMessage};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};
use std::io;
use std::net::IpAddr;
use std::os::fd::{AsFd, AsRawFd};
use std::path::Path;

pub use crate::cache::PodLinks;

pub struct Netlink {
    socket: Socket,
    seq: u32,
}

impl Netlink {
    /// A rtnetlink socket inside the network namespace at `netns` (e.g. `/var/run/netns/x`).
    pub fn open_in(netns: &Path) -> io::Result<Netlink> {
        Self::open_in_file(&std::fs::File::open(netns)?)
    }

    /// [`Netlink::open_in`] a namespace file already open (checked by its caller).
    pub fn open_in_file(ns: &std::fs::File) -> io::Result<Netlink> {
        let socket = std::thread::scope(|s| {
            s.spawn(|| -> io::Result<Socket> {
                nix::sched::setns(ns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
                    .map_err(io::Error::from)?;
                let mut socket = Socket::new(NETLINK_ROUTE)?;
                socket.bind_auto()?;
                socket.connect(&SocketAddr::new(0, 0))?;
                Ok(socket)
            })
            .join()
            .map_err(|_| io::Error::other("netns thread panicked"))?
        })?;
        Ok(Netlink { socket, seq: 0 })
    }

    fn request(
        &mut self,
        msg: RouteNetlinkMessage,
        flags: u16,
    ) -> io::Result<Vec<RouteNetlinkMessage>> {
        self.seq += 1;
        let mut hdr = NetlinkHeader::default();
        hdr.flags = flags;
        hdr.sequence_number = self.seq;
        let mut packet = NetlinkMessage::new(hdr, NetlinkPayload::from(msg));
        packet.finalize();
        let mut buf = vec![0; packet.buffer_len()];
        packet.serialize(&mut buf);
        self.socket.send(&buf, 0)?;
        let mut out = Vec::new();
        let mut rx = vec![0u8; 64 << 10];
        loop {
            let n = self.socket.recv(&mut &mut rx[..], 0)?;
            let mut offset = 0;
            while offset < n {
                let m = <NetlinkMessage<RouteNetlinkMessage>>::deserialize(&rx[offset..n])
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
                let len = m.header.length as usize;
                match m.payload {
                    NetlinkPayload::Done(_) => return Ok(out),
                    NetlinkPayload::Error(e) => {
                        return match e.code {
                            None => Ok(out),
                            Some(_) => Err(e.to_io()),
                        }
                    }
                    NetlinkPayload::InnerMessage(inner) => out.push(inner),
                    _ => {}
                }
                if len == 0 {
                    break;
                }
                offset += len;
            }
            if flags & NLM_F_DUMP != NLM_F_DUMP && flags & NLM_F_ACK != NLM_F_ACK {
                return Ok(out);
            }
        }
    }

    /// Every link: index, name and kind.
    pub fn link_entries(&mut self) -> io::Result<Vec<LinkEntry>> {
        let msgs = self.request(
            RouteNetlinkMessage::GetLink(LinkMessage::default()),
            NLM_F_REQUEST | NLM_F_DUMP,
        )?;
        Ok(msgs
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewLink(l) => {
                    let name = l.attributes.iter().find_map(|a| match a {
                        LinkAttribute::IfName(n) => Some(n.clone()),
                        _ => None,
                    })?;
                    let kind = l.attributes.iter().find_map(|a| match a {
                        LinkAttribute::LinkInfo(infos) => infos.iter().find_map(|i| match i {
                            LinkInfo::Kind(k) => Some(k.to_string()),
                            _ => None,
                        }),
                        _ => None,
                    });
                    Some(LinkEntry {
                        index: l.header.index,
                        name,
                        kind,
                    })
                }
                _ => None,
            })
            .collect())
    }

    /// (index, name) of every link.
    pub fn links(&mut self) -> io::Result<Vec<(u32, String)>> {
        Ok(self
            .link_entries()?
            .into_iter()
            .map(|l| (l.index, l.name))
            .collect())
    }

    pub fn delete_link(&mut self, index: u32) -> io::Result<()> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        self.request(RouteNetlinkMessage::DelLink(msg), NLM_F_REQUEST | NLM_F_ACK)?;
        Ok(())
    }

    /// Move a link into the namespace open at `to`, under the name it has.
    pub fn move_link(&mut self, index: u32, to: &std::fs::File) -> io::Result<()> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        msg.attributes = vec![LinkAttribute::NetNsFd(to.as_raw_fd())];
        self.request(RouteNetlinkMessage::SetLink(msg), NLM_F_REQUEST | NLM_F_ACK)?;
        Ok(())
    }

    /// Clear away what an ADD cut short left: every link not in `keep` (indexes) that `scope`
    /// says the ADD could have made (see [`decide`]) is deleted or given back to `home`; any
    /// other new link is left alone. Returns a line per link touched, saying what was done or why
    /// it could not be.
    pub fn sweep(
        &mut self,
        keep: &[u32],
        scope: &SweepScope,
        home: &std::fs::File,
    ) -> io::Result<Vec<String>> {
        let mut done = Vec::new();
        for l in self.link_entries()? {
            if keep.contains(&l.index) || l.name == "lo" {
                continue;
            }
            let kind = l.kind.as_deref().unwrap_or("device");
            let line = match decide(l.kind.as_deref(), &l.name, scope) {
                Action::Leave => continue,
                Action::Delete => match self.delete_link(l.index) {
                    Ok(()) => format!("deleted {kind} {}", l.name),
                    Err(e) => format!("could not delete {kind} {}: {e}", l.name),
                },
                Action::GiveBack => match self.move_link(l.index, home) {
                    Ok(()) => format!("gave {kind} {} back to plexus's network namespace", l.name),
                    Err(e) => format!(
                        "could not give {kind} {} back to plexus's network namespace: {e}",
                        l.name
                    ),
                },
            };
            done.push(line);
        }
        Ok(done)
    }

    pub fn link_index(&mut self, name: &str) -> io::Result<Option<u32>> {
        Ok(self
            .links()?
            .into_iter()
            .find(|(_, n)| n == name)
            .map(|(i, _)| i))
    }

    /// Default routes of the main table for one family.
    fn default_routes(&mut self, v6: bool) -> io::Result<Vec<RouteMessage>> {
        let mut req = RouteMessage::default();
        req.header.address_family = family(v6);
        let msgs = self.request(
            RouteNetlinkMessage::GetRoute(req),
            NLM_F_REQUEST | NLM_F_DUMP,
        )?;
        Ok(msgs
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewRoute(r)
                    if r.header.destination_prefix_length == 0
                        && r.header.table == RouteHeader::RT_TABLE_MAIN
                        && r.header.address_family == family(v6)
                        && r.header.kind == RouteType::Unicast =>
                {
                    Some(r)
                }
                _ => None,
            })
            .collect())
    }

    /// Make `gw` via link `ifname` the only default route of its family.
    pub fn set_default_route(&mut self, gw: IpAddr, ifname: &str) -> io::Result<()> {
        let v6 = gw.is_ipv6();
        let index = self
            .link_index(ifname)?
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("no link {ifname}")))?;
        for r in self.default_routes(v6)? {
            self.request(RouteNetlinkMessage::DelRoute(r), NLM_F_REQUEST | NLM_F_ACK)?;
        }
        let mut msg = RouteMessage::default();
        msg.header.address_family = family(v6);
        msg.header.table = RouteHeader::RT_TABLE_MAIN;
        msg.header.protocol = RouteProtocol::Boot;
        msg.header.scope = RouteScope::Universe;
        msg.header.kind = RouteType::Unicast;
        msg.attributes = vec![
            RouteAttribute::Gateway(RouteAddress::from(gw)),
            RouteAttribute::Oif(index),
        ];
        self.request(
            RouteNetlinkMessage::NewRoute(msg),
            NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
        )?;
        Ok(())
    }
}

/// One link of a namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkEntry {
    pub index: u32,
    pub name: String,
    /// `IFLA_INFO_KIND` (`macvlan`, `veth`, …); none for a physical device.
    pub kind: Option<String>,
}

/// What an ADD cut short could have left in the pod under a name its delegates' DELs do not
/// look for, or under one they do but did not remove.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SweepScope {
    /// The record's interface names (`eth0`, `net1`, …).
    pub ifnames: Vec<String>,
    /// Node devices its configs name (host-device's `device`), which a plugin moves into the pod
    /// under their own name before renaming them.
    pub devices: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Delete,
    GiveBack,
    Leave,
}

/// What to do with a link that was not in the pod before the ADD:
/// - a macvlan, ipvlan or vlan under the temporary name the reference plugins create it with
///   (`veth` and 8 hex digits; they rename it to the interface name after): deleted;
/// - one of the record's interface names still there after its DEL: a device (no kind) is given
///   back to plexus's namespace, a virtual link deleted;
/// - a node device the configs name, under its own name: given back;
/// - anything else is not known to be the ADD's (the pod's own, or another runtime call's): left.
pub fn decide(kind: Option<&str>, name: &str, scope: &SweepScope) -> Action {
    let temp_name = name.len() == 12
        && name.starts_with("veth")
        && name[4..].bytes().all(|b| b.is_ascii_hexdigit());
    let stacked = matches!(
        kind,
        Some("macvlan" | "macvtap" | "ipvlan" | "ipvtap" | "vlan")
    );
    if temp_name && stacked {
        return Action::Delete;
    }
    if scope.ifnames.iter().any(|n| n == name) {
        return match kind {
            None => Action::GiveBack,
            Some(_) => Action::Delete,
        };
    }
    if scope.devices.iter().any(|d| d == name) {
        return Action::GiveBack;
    }
    Action::Leave
}

fn family(v6: bool) -> AddressFamily {
    if v6 {
        AddressFamily::Inet6
    } else {
        AddressFamily::Inet
    }
}

/// What the engine does inside a pod's namespace.
pub trait NetnsOps: Send + Sync {
    /// The names of the links in the namespace at `netns`.
    fn link_names(&self, netns: &str) -> io::Result<Vec<String>>;
    /// Make `gw` via link `ifname` the only default route of its family in `netns`.
    fn set_default_route(&self, netns: &str, gw: IpAddr, ifname: &str) -> io::Result<()>;
    /// Whether `netns` is the namespace plexus itself runs in.
    fn is_own(&self, netns: &str) -> io::Result<bool>;
    /// The namespace at `netns` (its inode) and the indexes of its links now, and their names.
    fn pod_links(&self, netns: &str) -> io::Result<(PodLinks, Vec<String>)>;
    /// Clear away what an ADD cut short left in `netns` (see [`Netlink::sweep`]), if `netns` is
    /// still the namespace `before` was taken in; a line per link touched.
    fn sweep(&self, netns: &str, before: &PodLinks, scope: &SweepScope) -> io::Result<Vec<String>>;
}

/// [`NetnsOps`] on the real kernel.
#[derive(Debug, Default, Clone, Copy)]
pub struct Kernel;

impl NetnsOps for Kernel {
    fn link_names(&self, netns: &str) -> io::Result<Vec<String>> {
        Ok(Netlink::open_in(Path::new(netns))?
            .links()?
            .into_iter()
            .map(|(_, n)| n)
            .collect())
    }

    fn set_default_route(&self, netns: &str, gw: IpAddr, ifname: &str) -> io::Result<()> {
        Netlink::open_in(Path::new(netns))?.set_default_route(gw, ifname)
    }

    fn pod_links(&self, netns: &str) -> io::Result<(PodLinks, Vec<String>)> {
        use std::os::unix::fs::MetadataExt;
        let ns = std::fs::File::open(netns)?;
        let m = ns.metadata()?;
        let (indexes, names) = Netlink::open_in_file(&ns)?.links()?.into_iter().unzip();
        Ok((
            PodLinks {
                netns_dev: m.dev(),
                netns_ino: m.ino(),
                indexes,
            },
            names,
        ))
    }

    fn sweep(&self, netns: &str, before: &PodLinks, scope: &SweepScope) -> io::Result<Vec<String>> {
        use std::os::unix::fs::MetadataExt;
        // Opened here, on a thread in plexus's own namespace, before the socket is in the pod's.
        let home = std::fs::File::open("/proc/thread-self/ns/net")?;
        let ns = std::fs::File::open(netns)?;
        let m = ns.metadata()?;
        if (m.dev(), m.ino()) != (before.netns_dev, before.netns_ino) {
            return Err(io::Error::other(
                "it is another network namespace than the ADD's now; nothing touched",
            ));
        }
        Netlink::open_in_file(&ns)?.sweep(&before.indexes, scope, &home)
    }

    fn is_own(&self, netns: &str) -> io::Result<bool> {
        use std::os::unix::fs::MetadataExt;
        let theirs = match std::fs::metadata(netns) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(e),
        };
        let ours = std::fs::metadata("/proc/thread-self/ns/net")?;
        Ok(theirs.dev() == ours.dev() && theirs.ino() == ours.ino())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_what_the_add_could_have_made_is_swept() {
        let scope = SweepScope {
            ifnames: vec!["eth0".into(), "net1".into()],
            devices: vec!["ens1f0".into()],
        };
        let d = |kind: Option<&str>, name: &str| decide(kind, name, &scope);
        // The reference plugins' temporary names, on the kinds they create that way.
        assert_eq!(d(Some("macvlan"), "veth87c6c835"), Action::Delete);
        assert_eq!(d(Some("ipvlan"), "vethdeadbeef"), Action::Delete);
        assert_eq!(d(Some("vlan"), "veth0badc0de"), Action::Delete);
        // The same name on a veth (a pod's own, or a bridge plugin's peer) or not quite the
        // pattern: not known to be the ADD's.
        assert_eq!(d(Some("veth"), "veth87c6c835"), Action::Leave);
        assert_eq!(d(Some("macvlan"), "veth87c6c83"), Action::Leave);
        assert_eq!(d(Some("macvlan"), "vethxyzxyzxy"), Action::Leave);
        // The record's interfaces, left by a DEL that said it succeeded.
        assert_eq!(d(Some("macvlan"), "net1"), Action::Delete);
        assert_eq!(d(Some("veth"), "eth0"), Action::Delete);
        assert_eq!(d(None, "net1"), Action::GiveBack);
        // A node device the config names, moved in and not renamed yet.
        assert_eq!(d(None, "ens1f0"), Action::GiveBack);
        assert_eq!(d(Some("veth"), "ens1f0"), Action::GiveBack);
        // Anything else stays: the pod's own links, another call's.
        assert_eq!(d(Some("veth"), "keepme"), Action::Leave);
        assert_eq!(d(None, "ens2f0"), Action::Leave);
        assert_eq!(d(Some("tun"), "tun0"), Action::Leave);
    }

    #[test]
    fn own_namespace_is_recognised() {
        let k = Kernel;
        assert!(k.is_own("/proc/self/ns/net").unwrap());
        assert!(k
            .is_own(&format!("/proc/{}/ns/net", std::process::id()))
            .unwrap());
        assert!(!k.is_own("/nonexistent/netns").unwrap());
        // Another kind of namespace has another inode: not our netns.
        assert!(!k.is_own("/proc/self/ns/uts").unwrap());
    }
}
