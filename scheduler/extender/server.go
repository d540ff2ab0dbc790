package extender

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"time"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/klog/v2"
	extenderv1 "k8s.io/kube-scheduler/extender/v1"
)

// maxBody bounds a request: a filter of a pod and 5000 node names is far below it.
const maxBody = 8 << 20

// Verb paths under the extender's urlPrefix, as in the KubeSchedulerConfiguration.
const (
	PathFilter     = "/filter"
	PathPrioritize = "/prioritize"
	PathPreempt    = "/preempt"
	PathBind       = "/bind"
)

// badRequest is a request the extender refuses with HTTP 400; nothing is placed.
type badRequest struct{ msg string }

func (b *badRequest) Error() string { return b.msg }

func bad(format string, args ...any) error { return &badRequest{fmt.Sprintf(format, args...)} }

// Handler serves the four verbs. Every verb takes a POST of a JSON body; a body that is no
// such request gets HTTP 400 with the reason, and nothing happens.
func (e *Extender) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle(PathFilter, e.verb("filter", func(r *http.Request, body []byte) (any, error) {
		args, err := DecodeFilterArgs(body)
		if err != nil {
			return nil, err
		}
		return e.filter(r.Context(), args.Pod, nodeNames(args)), nil
	}))
	mux.Handle(PathPrioritize, e.verb("prioritize", func(r *http.Request, body []byte) (any, error) {
		args, err := DecodeFilterArgs(body)
		if err != nil {
			return nil, err
		}
		return e.prioritize(args.Pod, nodeNames(args)), nil
	}))
	mux.Handle(PathPreempt, e.verb("preempt", func(r *http.Request, body []byte) (any, error) {
		args, err := DecodePreemptionArgs(body)
		if err != nil {
			return nil, err
		}
		return e.preempt(r.Context(), args), nil
	}))
	mux.Handle(PathBind, e.verb("bind", func(r *http.Request, body []byte) (any, error) {
		args, err := DecodeBindingArgs(body)
		if err != nil {
			return nil, err
		}
		res := &extenderv1.ExtenderBindingResult{}
		if err := e.bind(r.Context(), args.PodNamespace, args.PodName, args.PodUID, args.Node); err != nil {
			res.Error = err.Error()
		}
		return res, nil
	}))
	return mux
}

func (e *Extender) verb(name string, answer func(*http.Request, []byte) (any, error)) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		code := http.StatusOK
		defer func() {
			requests.WithLabelValues(name, strconv.Itoa(code)).Inc()
			requestDuration.WithLabelValues(name).Observe(time.Since(start).Seconds())
		}()
		logger := klog.FromContext(r.Context()).WithValues("verb", name)
		r = r.WithContext(klog.NewContext(r.Context(), logger))
		if r.Method != http.MethodPost {
			code = http.StatusMethodNotAllowed
			w.Header().Set("Allow", http.MethodPost)
			http.Error(w, name+": only POST is allowed", code)
			return
		}
		body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxBody))
		if err != nil {
			code = http.StatusBadRequest
			http.Error(w, fmt.Sprintf("%s: reading the request: %v", name, err), code)
			return
		}
		out, err := answer(r, body)
		var br *badRequest
		switch {
		case errors.As(err, &br):
			code = http.StatusBadRequest
			logger.V(2).Info("Refused a malformed request", "err", err)
			http.Error(w, name+": "+br.msg, code)
			return
		case err != nil:
			code = http.StatusInternalServerError
			http.Error(w, name+": "+err.Error(), code)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		if err := json.NewEncoder(w).Encode(out); err != nil {
			logger.Error(err, "Writing the response failed")
		}
	})
}

func nodeNames(args *extenderv1.ExtenderArgs) []string {
	if args.NodeNames != nil {
		return *args.NodeNames
	}
	out := make([]string, 0, len(args.Nodes.Items))
	for _, n := range args.Nodes.Items {
		out = append(out, n.Name)
	}
	return out
}

// DecodeFilterArgs decodes and checks the body of a filter or prioritize request: a pod with a
// name, namespace and UID, and the candidate nodes (names, or node objects from a scheduler
// that is not told nodeCacheCapable), each named.
func DecodeFilterArgs(body []byte) (*extenderv1.ExtenderArgs, error) {
	var args extenderv1.ExtenderArgs
	if err := decode(body, &args); err != nil {
		return nil, err
	}
	if err := checkPod(args.Pod); err != nil {
		return nil, err
	}
	switch {
	case args.NodeNames != nil:
		for i, n := range *args.NodeNames {
			if n == "" {
				return nil, bad("nodenames[%d] is empty", i)
			}
		}
	case args.Nodes != nil:
		for i, n := range args.Nodes.Items {
			if n.Name == "" {
				return nil, bad("nodes.items[%d] has no name", i)
			}
		}
	default:
		return nil, bad("neither nodenames nor nodes is set")
	}
	return &args, nil
}

// DecodePreemptionArgs decodes and checks the body of a preempt request.
func DecodePreemptionArgs(body []byte) (*extenderv1.ExtenderPreemptionArgs, error) {
	var args extenderv1.ExtenderPreemptionArgs
	if err := decode(body, &args); err != nil {
		return nil, err
	}
	if err := checkPod(args.Pod); err != nil {
		return nil, err
	}
	for node, v := range args.NodeNameToMetaVictims {
		if node == "" {
			return nil, bad("nodeNameToMetaVictims has an empty node name")
		}
		if v == nil {
			continue
		}
		for i, p := range v.Pods {
			if p == nil || p.UID == "" {
				return nil, bad("nodeNameToMetaVictims[%q].pods[%d] has no uid", node, i)
			}
		}
	}
	for node := range args.NodeNameToVictims {
		if node == "" {
			return nil, bad("nodeNameToVictims has an empty node name")
		}
	}
	return &args, nil
}

// DecodeBindingArgs decodes and checks the body of a bind request: every field is required.
func DecodeBindingArgs(body []byte) (*extenderv1.ExtenderBindingArgs, error) {
	var args extenderv1.ExtenderBindingArgs
	if err := decode(body, &args); err != nil {
		return nil, err
	}
	for _, f := range []struct{ name, value string }{
		{"podName", args.PodName}, {"podNamespace", args.PodNamespace}, {"podUID", string(args.PodUID)}, {"node", args.Node},
	} {
		if f.value == "" {
			return nil, bad("%s is empty", f.name)
		}
	}
	return &args, nil
}

func decode(body []byte, v any) error {
	if len(body) == 0 {
		return bad("empty body: want a JSON request")
	}
	if err := json.Unmarshal(body, v); err != nil {
		return bad("not a JSON %T: %v", v, err)
	}
	return nil
}

func checkPod(p *v1.Pod) error {
	switch {
	case p == nil:
		return bad("pod is missing")
	case p.Name == "":
		return bad("pod has no name")
	case p.Namespace == "":
		return bad("pod %s has no namespace", p.Name)
	case p.UID == types.UID(""):
		return bad("pod %s/%s has no uid", p.Namespace, p.Name)
	}
	return nil
}
