package extender

import (
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/selection"
	"k8s.io/apimachinery/pkg/types"

	kv1 "github.com/kybernate/kybernate/apis/kybernate/v1alpha1"
)

// labelsHasPreemptor selects GPUCheckpoints made for a preemptor.
var labelsHasPreemptor = func() labels.Selector {
	req, err := labels.NewRequirement(kv1.LabelPreemptor, selection.Exists, nil)
	if err != nil {
		panic(err)
	}
	return labels.NewSelector().Add(*req)
}()

func preemptorSelector(uid types.UID) labels.Selector {
	return labels.SelectorFromSet(labels.Set{kv1.LabelPreemptor: string(uid)})
}
