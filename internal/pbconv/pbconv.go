// Package pbconv converts between the core's types (internal/node,
// internal/errdefs) and their protobuf form, once for every transport: the
// agent session (internal/wire) and the Control API (internal/control) use
// the same conversions, so an exit or an error reads the same on both.
package pbconv

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"syscall"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/drover-hpc/drover/api/droverpb"
	"github.com/drover-hpc/drover/internal/errdefs"
	"github.com/drover-hpc/drover/internal/node"
	"github.com/drover-hpc/drover/internal/topology"
)

// The ASCII trailers of a Control error, for clients without
// google/rpc/status.proto (Debian's Python).
const (
	TrailerKind  = "drover-error-kind"
	TrailerErrno = "drover-errno"
	TrailerPath  = "drover-path"
)

// Kind is the protobuf form of an error kind: the enum value named after it.
func Kind(k errdefs.Kind) droverpb.ErrorKind {
	return droverpb.ErrorKind(droverpb.ErrorKind_value["ERROR_KIND_"+strings.ToUpper(k.String())])
}

// KindFromPB is the inverse of Kind.
func KindFromPB(k droverpb.ErrorKind) errdefs.Kind {
	return errdefs.ParseKind(strings.ToLower(strings.TrimPrefix(k.String(), "ERROR_KIND_")))
}

// Detail is the protobuf form of err's kind, errno and path; nil when err
// carries no kind.
func Detail(err error) *droverpb.ErrorDetail {
	k := errdefs.KindOf(err)
	if k == errdefs.Unknown {
		return nil
	}
	d := &droverpb.ErrorDetail{Kind: Kind(k)}
	var se *errdefs.SpawnError
	if errors.As(err, &se) {
		d.Errno, d.Path = int32(se.Errno), se.Path
	}
	return d
}

// Error rebuilds an error from its message and detail (nil when both are empty).
func Error(msg string, d *droverpb.ErrorDetail) error {
	if msg == "" && d == nil {
		return nil
	}
	return errdefs.Remote(KindFromPB(d.GetKind()), msg, syscall.Errno(d.GetErrno()), d.GetPath())
}

// codeOf is the gRPC code of each kind.
var codeOf = map[errdefs.Kind]codes.Code{
	errdefs.UnknownProcess: codes.NotFound,
	errdefs.UnknownNode:    codes.NotFound,
	errdefs.Duplicate:      codes.AlreadyExists,
	errdefs.Running:        codes.FailedPrecondition,
	errdefs.NotRunning:     codes.FailedPrecondition,
	errdefs.SpawnFailed:    codes.FailedPrecondition,
	errdefs.Busy:           codes.ResourceExhausted,
	errdefs.Invalid:        codes.InvalidArgument,
	errdefs.NodeLost:       codes.Unavailable,
	errdefs.Closed:         codes.Unavailable,
	errdefs.AfterTimeout:   codes.DeadlineExceeded,
	errdefs.StageTimeout:   codes.DeadlineExceeded,
	errdefs.Cancelled:      codes.Canceled,
}

// Status turns an error into a gRPC status error: a typed error gets its
// kind's code and an ErrorDetail; an ended context is CANCELED or
// DEADLINE_EXCEEDED; anything else UNKNOWN. The message is the error's
// text; nil stays nil; a status error passes through.
func Status(err error) error {
	if err == nil {
		return nil
	}
	if _, ok := err.(interface{ GRPCStatus() *status.Status }); ok {
		return err
	}
	if d := Detail(err); d != nil {
		code := codeOf[KindFromPB(d.GetKind())]
		st, derr := status.New(code, err.Error()).WithDetails(d)
		if derr != nil {
			return status.Error(code, err.Error())
		}
		return st.Err()
	}
	switch {
	case errors.Is(err, context.Canceled):
		return status.Error(codes.Canceled, err.Error())
	case errors.Is(err, context.DeadlineExceeded):
		return status.Error(codes.DeadlineExceeded, err.Error())
	}
	return status.Error(codes.Unknown, err.Error())
}

// Trailer is the ASCII trailer of an error made by Status: its kind and,
// for a spawn failure, the errno and path. Empty when it has no kind.
func Trailer(err error) metadata.MD {
	d := StatusDetail(status.Convert(err))
	if d == nil {
		return nil
	}
	md := metadata.Pairs(TrailerKind, KindFromPB(d.GetKind()).String())
	if d.GetErrno() != 0 {
		md.Set(TrailerErrno, strconv.Itoa(int(d.GetErrno())))
	}
	if d.GetPath() != "" {
		md.Set(TrailerPath, d.GetPath())
	}
	return md
}

// StatusDetail is the ErrorDetail of a status, nil when it has none.
func StatusDetail(st *status.Status) *droverpb.ErrorDetail {
	for _, d := range st.Details() {
		if ed, ok := d.(*droverpb.ErrorDetail); ok {
			return ed
		}
	}
	return nil
}

// FromStatus turns a status error back into a typed error: nil when the
// status has no ErrorDetail.
func FromStatus(err error) error {
	st, ok := status.FromError(err)
	if !ok {
		return nil
	}
	d := StatusDetail(st)
	if d == nil {
		return nil
	}
	return Error(st.Message(), d)
}

func unixNano(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixNano()
}

func fromUnixNano(n int64) time.Time {
	if n == 0 {
		return time.Time{}
	}
	return time.Unix(0, n)
}

// Exit is the protobuf form of an exit.
func Exit(e node.Exit) *droverpb.Exit {
	out := &droverpb.Exit{
		Name:          e.Name,
		Node:          e.Node,
		Code:          int32(e.Code),
		StartUnixNano: unixNano(e.Start),
		EndUnixNano:   unixNano(e.End),
		Error:         e.Err,
	}
	if e.Signal != 0 {
		out.Signal = node.SignalName(e.Signal)
	}
	return out
}

// ExitFromPB is the inverse of Exit. A signal it does not know becomes the
// exit's error.
func ExitFromPB(e *droverpb.Exit) node.Exit {
	out := node.Exit{
		Name:  e.GetName(),
		Node:  e.GetNode(),
		Code:  int(e.GetCode()),
		Start: fromUnixNano(e.GetStartUnixNano()),
		End:   fromUnixNano(e.GetEndUnixNano()),
		Err:   e.GetError(),
	}
	if e.GetSignal() != "" {
		if sig, ok := node.ParseSignal(e.GetSignal()); ok {
			out.Signal = sig
		} else if out.Err == "" {
			out.Err = "unknown signal " + e.GetSignal()
		}
	}
	return out
}

// Statuses is the protobuf form of a poll's statuses.
func Statuses(st []node.Status) []*droverpb.ProcessStatus {
	out := make([]*droverpb.ProcessStatus, 0, len(st))
	for _, s := range st {
		ps := &droverpb.ProcessStatus{Name: s.Name, Running: s.State == node.Running}
		switch s.State {
		case node.Exited:
			ps.Exit = Exit(s.Exit)
		case node.Unknown:
			ps.Error, ps.ErrorDetail = s.Err.Error(), Detail(s.Err)
		}
		out = append(out, ps)
	}
	return out
}

// StatusesFromPB is the inverse of Statuses.
func StatusesFromPB(p []*droverpb.ProcessStatus) []node.Status {
	out := make([]node.Status, 0, len(p))
	for _, s := range p {
		st := node.Status{Name: s.GetName(), State: node.Running}
		switch {
		case s.GetError() != "" || s.GetErrorDetail() != nil:
			st.State, st.Err = node.Unknown, Error(s.GetError(), s.GetErrorDetail())
		case !s.GetRunning():
			st.State, st.Exit = node.Exited, ExitFromPB(s.GetExit())
		}
		out = append(out, st)
	}
	return out
}

// Resources is the protobuf form of a node's resources.
func Resources(r topology.Resources) *droverpb.Resources {
	out := droverpb.NewResources(r.Node, r.Cores, r.MemoryBytes)
	for _, g := range r.GPUs {
		out.Gpus = append(out.Gpus, &droverpb.Gpu{Vendor: g.Vendor, Id: g.ID, Uuid: g.UUID, Model: g.Model, Numa: int32(g.NUMA)})
	}
	out.CoreNuma = droverpb.Int32s(r.NUMA)
	out.Custom = r.Custom
	return out
}

// ResourcesFromPB is the inverse of Resources.
func ResourcesFromPB(r *droverpb.Resources) topology.Resources {
	out := topology.Resources{Node: r.GetNode(), Cores: r.CoreLists(), MemoryBytes: r.GetMemoryBytes(),
		NUMA: droverpb.Ints(r.GetCoreNuma()), Custom: r.GetCustom(), GPUs: []topology.GPU{}}
	for _, g := range r.GetGpus() {
		out.GPUs = append(out.GPUs, topology.GPU{Vendor: g.GetVendor(), ID: g.GetId(), UUID: g.GetUuid(), Model: g.GetModel(), NUMA: int(g.GetNuma())})
	}
	return out
}
