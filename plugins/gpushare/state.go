package gpushare

import (
	fwk "k8s.io/kube-scheduler/framework"

	"github.com/kybernate/kybernate/gpupod"
)

// stateKey is where PreFilter leaves the pod's demand for the later extension points.
const stateKey fwk.StateKey = Name + "/demand"

// preFilterState is the pod's GPU demand, parsed once per scheduling cycle.
type preFilterState struct {
	demand gpupod.Demand
}

// Clone returns a copy; the state holds no references, so a value copy is deep.
func (s *preFilterState) Clone() fwk.StateData {
	c := *s
	return &c
}

func getPreFilterState(state fwk.CycleState) (*preFilterState, error) {
	data, err := state.Read(stateKey)
	if err != nil {
		return nil, err
	}
	return data.(*preFilterState), nil
}
