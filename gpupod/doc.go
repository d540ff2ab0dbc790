// Package gpupod is Kybernate's domain package: what a pod is to Kybernate, in one place for the
// scheduler's plugins and controllers, the node agent (controller, simulator, checkpoints) and
// the containerd shim.
//
// It owns:
//   - the codecs of every kybernate.io annotation and label value on pods (names in
//     apis/kybernate/v1alpha1); decode errors name the annotation and the bad value;
//   - a pod's GPU demand (PodDemand, counted by k8s.io/component-helpers' PodRequests);
//   - the GPU assignment codec (ParseGPUs/FormatGPUs of kybernate.io/gpus) and the accounting
//     of a node's GPUs (Accounting) that places pods on them;
//   - the Ledger of placements a program has decided but its informers may not show yet, one
//     per program, shared by whatever places GPU memory in it (GPUShare or the extender, the
//     resume and migration controllers);
//   - who may be suspended for a preemptor and at what cost (Ineligibility, ByCost,
//     SuspendCheckpoint), shared by CheckpointPreemption and the extender, and SelectVictims,
//     the extender's dry run by the accounting alone;
//   - the pod GPU state machine: the table of allowed kybernate.io/state transitions and
//     SetState, the one function that writes the state.
//
// It imports only apis/ and Kubernetes libraries; everything else imports it.
package gpupod
