package server

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"slices"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc/credentials"
)

// PeerInfo is the AuthInfo of a connection on the agent's socket: the peer process's
// credentials from SO_PEERCRED.
type PeerInfo struct {
	credentials.CommonAuthInfo
	PID int32
	UID uint32
	GID uint32
}

// AuthType implements credentials.AuthInfo.
func (PeerInfo) AuthType() string { return "peercred" }

// ErrPeerNotAllowed is the handshake error for peers of other users.
var ErrPeerNotAllowed = errors.New("peer not allowed: the agent's socket serves root (and the agent's own user) only")

// PeerCredentials is grpc TransportCredentials for a unix socket that admit only peers whose
// UID is allowed: root and the agent's own user by default. The socket's mode 0600 keeps
// others out already; this is the second lock, and it names the peer in the connection.
type PeerCredentials struct {
	// Allowed UIDs; nil means 0 and os.Getuid().
	Allowed []uint32
}

var _ credentials.TransportCredentials = PeerCredentials{}

func (c PeerCredentials) allowed(uid uint32) bool {
	if c.Allowed == nil {
		return uid == 0 || uid == uint32(os.Getuid())
	}
	return slices.Contains(c.Allowed, uid)
}

// ServerHandshake reads the peer's credentials and refuses peers that are not allowed.
func (c PeerCredentials) ServerHandshake(conn net.Conn) (net.Conn, credentials.AuthInfo, error) {
	uc, ok := conn.(*net.UnixConn)
	if !ok {
		return nil, nil, fmt.Errorf("%w: connection is %T, not a unix socket", ErrPeerNotAllowed, conn)
	}
	raw, err := uc.SyscallConn()
	if err != nil {
		return nil, nil, fmt.Errorf("reading peer credentials: %w", err)
	}
	var cred *unix.Ucred
	var credErr error
	if err := raw.Control(func(fd uintptr) {
		cred, credErr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return nil, nil, fmt.Errorf("reading peer credentials: %w", err)
	}
	if credErr != nil {
		return nil, nil, fmt.Errorf("reading peer credentials: %w", credErr)
	}
	if !c.allowed(cred.Uid) {
		return nil, nil, fmt.Errorf("%w (pid %d uid %d)", ErrPeerNotAllowed, cred.Pid, cred.Uid)
	}
	return conn, PeerInfo{
		CommonAuthInfo: credentials.CommonAuthInfo{SecurityLevel: credentials.PrivacyAndIntegrity},
		PID:            cred.Pid, UID: cred.Uid, GID: cred.Gid,
	}, nil
}

// ClientHandshake passes the connection through: clients trust the socket's path.
func (PeerCredentials) ClientHandshake(_ context.Context, _ string, conn net.Conn) (net.Conn, credentials.AuthInfo, error) {
	return conn, PeerInfo{CommonAuthInfo: credentials.CommonAuthInfo{SecurityLevel: credentials.PrivacyAndIntegrity}}, nil
}

// Info implements credentials.TransportCredentials.
func (PeerCredentials) Info() credentials.ProtocolInfo {
	return credentials.ProtocolInfo{SecurityProtocol: "peercred"}
}

// Clone implements credentials.TransportCredentials.
func (c PeerCredentials) Clone() credentials.TransportCredentials {
	return PeerCredentials{Allowed: slices.Clone(c.Allowed)}
}

// OverrideServerName implements credentials.TransportCredentials; there is no server name.
func (PeerCredentials) OverrideServerName(string) error { return nil }
