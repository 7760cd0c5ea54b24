(function(){
"use strict";
const D=JSON.parse(document.getElementById("data").textContent);
const Q=D.queries,T=D.thumbs,H=D.rowHeight,KEY="whale-review:"+D.id;
const list=document.getElementById("list"),count=document.getElementById("count");
const el={wrong:byId("f-wrong"),neww:byId("f-new"),min:byId("f-min"),max:byId("f-max"),sort:byId("f-sort")};
let view=[],cur=0,shown=new Map(),dec=JSON.parse(localStorage.getItem(KEY)||"{}");
function byId(i){return document.getElementById(i);}
function mk(tag,cls,text){const e=document.createElement(tag);if(cls)e.className=cls;if(text!=null)e.textContent=text;return e;}
function fmt(s){return s==null?"\u2014":s.toFixed(3);}
function readHash(){
  const p=new URLSearchParams(location.hash.slice(1));
  el.wrong.checked=p.get("wrong")==="1";el.neww.checked=p.get("new")==="1";
  el.min.value=p.get("min")||"";el.max.value=p.get("max")||"";el.sort.value=p.get("sort")||"";
  return parseInt(p.get("q")||"0",10)||0;
}
function writeHash(){
  const p=new URLSearchParams();
  if(el.wrong.checked)p.set("wrong","1");if(el.neww.checked)p.set("new","1");
  if(el.min.value!=="")p.set("min",el.min.value);if(el.max.value!=="")p.set("max",el.max.value);
  if(el.sort.value)p.set("sort",el.sort.value);if(cur)p.set("q",String(cur));
  history.replaceState(null,"","#"+p.toString());
}
function apply(q0){
  const lo=el.min.value===""?-Infinity:+el.min.value,hi=el.max.value===""?Infinity:+el.max.value;
  view=[];
  for(let i=0;i<Q.length;i++){const q=Q[i];
    if(el.wrong.checked&&!(q.r!=null&&q.r!==1))continue;
    if(el.neww.checked&&q.c[0][0]!=="new_whale")continue;
    if(q.b<lo||q.b>hi)continue;view.push(i);}
  if(el.sort.value==="asc")view.sort((a,b)=>Q[a].f-Q[b].f||a-b);
  if(el.sort.value==="desc")view.sort((a,b)=>Q[b].f-Q[a].f||a-b);
  count.textContent=view.length+" of "+Q.length+" queries";
  for(const e of shown.values())e.remove();shown.clear();
  list.style.height=(view.length*H)+"px";
  cur=Math.max(0,Math.min(q0||0,view.length-1));render();
}
function tile(cls,src,lines,title){
  const t=mk("div","tile "+cls),box=mk("div","im");
  if(src>=0){const im=mk("img");im.loading="lazy";im.decoding="async";im.src=T[src];im.alt=lines[0];box.appendChild(im);}
  else box.textContent=cls.indexOf("nw")>=0?"new_whale":"no photo";
  t.appendChild(box);for(const l of lines)t.appendChild(mk("div","cap",l));t.title=title;return t;
}
function row(v){
  const q=Q[view[v]],r=mk("div","row"+(v===cur?" cur":""));r.style.top=(v*H)+"px";r.dataset.v=v;r.dataset.image=q.n;
  const tag=q.r==null?"":(q.r===1?"\u2713 correct":(q.r>0?"truth at rank "+q.r:"\u2717 truth not in top 5"));
  const d=dec[q.n];
  const qt=tile("q",q.t,[(v+1)+". "+q.n,"best "+fmt(q.b)+" \u00b7 conf "+fmt(q.f),
    q.y==null?"truth unknown":"truth "+q.y],q.n),ln=mk("div","cap");
  if(tag)ln.appendChild(mk("span","tag "+(q.r===1?"ok":"bad"),tag+" "));
  if(d)ln.appendChild(mk("span","dec","decision: "+d));qt.appendChild(ln);
  r.appendChild(qt);
  q.c.forEach(function(c,k){
    const cls="cand"+(c[0]==="new_whale"?" nw":"")+(c[4]===1?" ok":c[4]===0?" bad":"")+(d===c[0]?" pick":"");
    const t=tile(cls,c[3],[(k+1)+". "+c[0],"score "+fmt(c[1]),c[2]||""],c[2]||c[0]);
    t.dataset.label=c[0];t.onclick=function(){cur=v;decide(c[0]);};r.appendChild(t);
  });
  return r;
}
function render(){
  const top=list.getBoundingClientRect().top+scrollY;
  const a=Math.max(0,Math.floor((scrollY-top)/H)-4),b=Math.min(view.length,Math.ceil((scrollY+innerHeight-top)/H)+4);
  for(const [v,e] of shown)if(v<a||v>=b){e.remove();shown.delete(v);}
  for(let v=a;v<b;v++)if(!shown.has(v)){const e=row(v);shown.set(v,e);list.appendChild(e);}
}
function redraw(v){const e=shown.get(v);if(e){const n=row(v);e.replaceWith(n);shown.set(v,n);}}
function go(v){
  if(!view.length)return;const old=cur;cur=Math.max(0,Math.min(v,view.length-1));
  const top=list.getBoundingClientRect().top+scrollY+cur*H,head=document.querySelector("header").offsetHeight;
  if(top<scrollY+head||top+H>scrollY+innerHeight)scrollTo(0,top-head-H);
  render();redraw(old);redraw(cur);writeHash();
}
function decide(label){
  const q=Q[view[cur]];if(!q)return;
  if(label==null)delete dec[q.n];else dec[q.n]=label;
  localStorage.setItem(KEY,JSON.stringify(dec));redraw(cur);go(cur);
}
byId("download").onclick=function(){
  const lines=["Image,Decision"];for(const k in dec)lines.push(JSON.stringify(k)+","+dec[k]);
  const a=mk("a");a.href=URL.createObjectURL(new Blob([lines.join("\n")+"\n"],{type:"text/csv"}));
  a.download="decisions.csv";document.body.appendChild(a);a.click();a.remove();
};
for(const k in el)el[k].addEventListener("change",function(){apply(0);writeHash();});
let pending=false;
addEventListener("scroll",function(){if(!pending){pending=true;requestAnimationFrame(function(){pending=false;render();});}});
addEventListener("resize",render);
addEventListener("hashchange",function(){apply(readHash());});
addEventListener("keydown",function(e){
  if(e.target.tagName==="INPUT"||e.target.tagName==="SELECT"||e.ctrlKey||e.metaKey||e.altKey)return;
  const q=Q[view[cur]];let used=true;
  if(e.key==="j"||e.key==="ArrowDown")go(cur+1);else if(e.key==="k"||e.key==="ArrowUp")go(cur-1);
  else if(e.key>="1"&&e.key<="5"&&q&&q.c[+e.key-1])decide(q.c[+e.key-1][0]);
  else if(e.key==="x")decide("none");else if(e.key==="u")decide(null);else used=false;
  if(used)e.preventDefault();
});
apply(readHash());if(cur)go(cur);
document.body.dataset.ready="1";
})();
