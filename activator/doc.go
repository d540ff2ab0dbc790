// Package activator is Kybernate's scale to zero: a reverse proxy in front of GPU inference
// Services whose pods opt in with kybernate.io/idle-after.
//
// A Service of type ExternalName points its clients at the activator and names its pods with
// kybernate.io/backend-selector and kybernate.io/backend-port. The activator forwards each
// request to a ready pod of the Service (Proxy). When no request has come for a pod's
// idle-after, it puts the pod to sleep: a GPUCheckpoint (action Suspend, reason Idle) that the
// node agent carries out like any suspension, freeing the GPU. A request that arrives while
// the pods sleep is held in the Service's bounded queue (Backend) and the activator asks for a
// wake by stamping kybernate.io/wake-requested on a sleeping pod: the scheduler's resume
// controller then resumes it by priority, like every suspended pod. Once the pod is ready the
// held requests go to it in arrival order; a full queue, a request held past its timeout or a
// failed wake answers 503 with Retry-After and says why (Controller).
package activator
